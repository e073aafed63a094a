resource "azurerm_servicebus_namespace" "this" {
  name                = var.servicebus_namespace_name
  location            = var.location
  resource_group_name = var.resource_group_name
  # Standard: the lowest tier with duplicate detection.
  sku                 = "Standard"
  minimum_tls_version = "1.2"
  # Local (SAS) authentication stays on only for the KEDA scale rule's listen-only rule below;
  # the scheduler and the workers authenticate with the managed identity.
  local_auth_enabled = true
  tags               = var.tags
}

resource "azurerm_servicebus_queue" "work_items" {
  name         = local.queue_name
  namespace_id = azurerm_servicebus_namespace.this.id

  # Duplicate detection can only be chosen when the queue is created. A re-sent work item keeps
  # its messageId (<runId>:<partitionId>), so Service Bus drops the copy within this window.
  requires_duplicate_detection            = true
  duplicate_detection_history_time_window = var.duplicate_detection_window

  # Peek-lock: the worker renews the lock while it pages a partition; after max_delivery_count
  # deliveries the item is dead-lettered and its partition marked failed.
  lock_duration                        = "PT5M"
  max_delivery_count                   = var.max_delivery_count
  default_message_ttl                  = var.message_ttl
  dead_lettering_on_message_expiration = true
}

# Listen-only, on the queue alone: what the worker's KEDA scale rule needs to read the queue
# length, and nothing more.
resource "azurerm_servicebus_queue_authorization_rule" "keda" {
  name     = "keda-listen"
  queue_id = azurerm_servicebus_queue.work_items.id
  listen   = true
  send     = false
  manage   = false
}

# The scale rule takes its connection string from a Container Apps secret; like every other
# secret of the jobs it is a Key Vault reference. (The value is in the Terraform state as a
# sensitive attribute of the rule either way: keep the state in an encrypted backend.)
resource "azurerm_key_vault_secret" "keda_connection" {
  name         = var.keda_connection_secret_name
  key_vault_id = data.azurerm_key_vault.this.id
  value        = azurerm_servicebus_queue_authorization_rule.keda.primary_connection_string
  content_type = "Service Bus connection string (listen only, queue ${local.queue_name})"
  tags         = var.tags
}
