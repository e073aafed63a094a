// Shared by the simulator and client tests: raw GraphQL calls to a running simulator, a
// client configuration pointing at it, and a logger whose lines are captured.
import type { Config } from '../../src/config.js';
import type { Simulator } from '../../tools/simulator/server.js';

export interface RawResponse {
  status: number;
  headers: Headers;
  body: { data?: Record<string, unknown> | null; errors?: { message: string; extensions?: { code?: string } }[] };
}

export async function gql(url: string, query: string, variables?: Record<string, unknown>): Promise<RawResponse> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query, variables }),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: JSON.parse(text) as RawResponse['body'] };
}

export async function tokenFor(sim: Simulator): Promise<string> {
  const res = await gql(
    sim.url,
    'query($u: String!, $p: String!) { authenticate { username_and_password(username: $u, password: $p) { token } } }',
    { u: sim.username, p: sim.password },
  );
  const auth = res.body.data?.authenticate as { username_and_password: { token: string } } | undefined;
  if (!auth) throw new Error(`authentication failed: ${JSON.stringify(res.body)}`);
  return auth.username_and_password.token;
}

export function clientConfig(sim: Simulator, overrides: Partial<Config['nivoda']> = {}): Config['nivoda'] {
  return {
    endpoint: sim.url,
    username: sim.username,
    password: sim.password,
    priceField: 'dollar_value',
    baseQuery: {},
    requestTimeoutMs: 5000,
    maxConcurrency: 4,
    maxRequestsPerSecond: 1000,
    maxAttempts: 5,
    retryBudgetMs: 20_000,
    ...overrides,
  };
}
