# What the identity may do, each on the narrowest scope: Key Vault per secret, not on the whole
# vault; the queue's sending side for the scheduler, its receiving side (peek-lock, settle,
# dead-letter) for the workers.
resource "azurerm_role_assignment" "this" {
  for_each = {
    acr_pull               = { role = "AcrPull", scope = data.azurerm_container_registry.this.id }
    watermark_blob         = { role = "Storage Blob Data Contributor", scope = azurerm_storage_container.watermarks.resource_manager_id }
    queue_sender           = { role = "Azure Service Bus Data Sender", scope = azurerm_servicebus_queue.work_items.id }
    queue_receiver         = { role = "Azure Service Bus Data Receiver", scope = azurerm_servicebus_queue.work_items.id }
    secret_nivoda_password = { role = "Key Vault Secrets User", scope = "${data.azurerm_key_vault.this.id}/secrets/${var.nivoda_password_secret_name}" }
    secret_database_url    = { role = "Key Vault Secrets User", scope = "${data.azurerm_key_vault.this.id}/secrets/${var.database_url_secret_name}" }
    secret_keda_connection = { role = "Key Vault Secrets User", scope = azurerm_key_vault_secret.keda_connection.resource_versionless_id }
  }

  scope                = each.value.scope
  role_definition_name = each.value.role
  principal_id         = azurerm_user_assigned_identity.this.principal_id
  principal_type       = "ServicePrincipal"
}
