// The one place that makes the Azure credential the adapters authenticate with when no
// connection string is configured: Blob (AZURE_STORAGE_ACCOUNT_URL), Service Bus
// (AZURE_SERVICE_BUS_NAMESPACE) and PostgreSQL (DATABASE_AUTH=azure). Adapters take a
// credential as an option and fall back to this one, so tests can hand them their own.
import { DefaultAzureCredential, type TokenCredential } from '@azure/identity';

export type { TokenCredential };

/** The scope of an Entra ID token that Azure Database for PostgreSQL accepts as a password. */
export const POSTGRES_TOKEN_SCOPE = 'https://ossrdbms-aad.database.windows.net/.default';

export interface CredentialSettings {
  /** AZURE_CLIENT_ID: the client id of a user-assigned managed identity. */
  azureClientId?: string;
}

// One credential per identity for the whole process: DefaultAzureCredential caches its tokens
// per instance, so the three adapters share one cache instead of asking the endpoint three times.
const credentials = new Map<string, TokenCredential>();

/**
 * DefaultAzureCredential: in the Container Apps Job that is the managed identity; with
 * AZURE_CLIENT_ID, the user-assigned one with that client id (a job may carry several
 * identities, and a system-assigned one cannot pull the image or read Key Vault on first start).
 */
export function azureCredential(settings: CredentialSettings = {}): TokenCredential {
  const key = settings.azureClientId ?? '';
  let credential = credentials.get(key);
  if (!credential) {
    credential = new DefaultAzureCredential(settings.azureClientId ? { managedIdentityClientId: settings.azureClientId } : {});
    credentials.set(key, credential);
  }
  return credential;
}
