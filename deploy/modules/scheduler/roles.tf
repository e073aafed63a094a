# What the identity may do, each on the narrowest scope.

resource "azurerm_role_assignment" "acr_pull" {
  scope                = data.azurerm_container_registry.this.id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "watermark_blob" {
  scope                = azurerm_storage_container.watermarks.resource_manager_id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "queue_sender" {
  scope                = azurerm_servicebus_queue.work_items.id
  role_definition_name = "Azure Service Bus Data Sender"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}

# The workers' side of the queue (peek-lock, settle, dead-letter).
resource "azurerm_role_assignment" "queue_receiver" {
  scope                = azurerm_servicebus_queue.work_items.id
  role_definition_name = "Azure Service Bus Data Receiver"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}

# Per secret, not on the whole vault.
resource "azurerm_role_assignment" "key_vault_secrets" {
  for_each = {
    "nivoda-password" = "${data.azurerm_key_vault.this.id}/secrets/${var.nivoda_password_secret_name}"
    "database-url"    = "${data.azurerm_key_vault.this.id}/secrets/${var.database_url_secret_name}"
    "keda-connection" = azurerm_key_vault_secret.keda_connection.resource_versionless_id
  }

  scope                = each.value
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}
