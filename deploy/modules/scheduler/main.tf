# The scheduler of the Nivoda ingestion pipeline and its workers as Azure Container Apps Jobs,
# with everything they talk to. Every data-plane call uses one user-assigned identity: a
# system-assigned one only exists once the job does, too late to pull the image or read the
# Key Vault secrets the job needs to be created at all.

locals {
  queue_name           = "work-items"
  watermark_container  = "watermarks"
  scheduler_job_name   = "${var.name_prefix}-scheduler"
  worker_job_name      = "${var.name_prefix}-worker"
  servicebus_host      = "${azurerm_servicebus_namespace.this.name}.servicebus.windows.net"
  image                = "${data.azurerm_container_registry.this.login_server}/${var.image}"
  key_vault_secret_url = "${trimsuffix(data.azurerm_key_vault.this.vault_uri, "/")}/secrets"

  # The vendor's limit is global: the scheduler keeps its share, each worker execution takes a
  # fixed share of the rest, so the number of executions KEDA may run at once follows from it.
  worker_budget         = var.nivoda_global_requests_per_second - var.scheduler_requests_per_second
  worker_max_executions = max(1, floor(local.worker_budget / var.worker_requests_per_second))

  # Secrets the jobs read, by versionless Key Vault reference (a rotated value is picked up
  # without a Terraform change). Their values never pass through Terraform.
  nivoda_password_secret_id = "${local.key_vault_secret_url}/${var.nivoda_password_secret_name}"
  database_url_secret_id    = "${local.key_vault_secret_url}/${var.database_url_secret_name}"

  # Settings both jobs share; managed identity everywhere (no connection strings, no keys).
  common_env = merge(var.extra_env, {
    NODE_ENV                          = "production"
    NIVODA_ENDPOINT                   = var.nivoda_endpoint
    NIVODA_USERNAME                   = var.nivoda_username
    NIVODA_QUERY                      = var.nivoda_query
    NIVODA_GLOBAL_REQUESTS_PER_SECOND = tostring(var.nivoda_global_requests_per_second)
    AZURE_CLIENT_ID                   = azurerm_user_assigned_identity.this.client_id
    AZURE_STORAGE_ACCOUNT_URL         = azurerm_storage_account.this.primary_blob_endpoint
    WATERMARK_CONTAINER               = local.watermark_container
    AZURE_SERVICE_BUS_NAMESPACE       = local.servicebus_host
    AZURE_SERVICE_BUS_QUEUE           = local.queue_name
    # The worker dead-letters on its last allowed delivery: the same number as the queue's.
    WORKER_MAX_DELIVERIES = tostring(var.max_delivery_count)
  })
}

data "azurerm_container_registry" "this" {
  name                = var.container_registry_name
  resource_group_name = var.container_registry_resource_group_name
}

# Metadata only (id and URI); secret values are never read into the state.
data "azurerm_key_vault" "this" {
  name                = var.key_vault_name
  resource_group_name = var.key_vault_resource_group_name
}

resource "azurerm_log_analytics_workspace" "this" {
  name                = "${var.name_prefix}-logs"
  location            = var.location
  resource_group_name = var.resource_group_name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_container_app_environment" "this" {
  name                       = "${var.name_prefix}-env"
  location                   = var.location
  resource_group_name        = var.resource_group_name
  log_analytics_workspace_id = azurerm_log_analytics_workspace.this.id
  tags                       = var.tags
}

resource "azurerm_user_assigned_identity" "this" {
  name                = "${var.name_prefix}-identity"
  location            = var.location
  resource_group_name = var.resource_group_name
  tags                = var.tags
}
