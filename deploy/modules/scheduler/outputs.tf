output "scheduler_job_name" {
  description = "Name of the scheduler's Container Apps Job (az containerapp job start -n <this> -g <resource group>)."
  value       = azurerm_container_app_job.this["scheduler"].name
}

output "worker_job_name" {
  description = "Name of the workers' event-driven Container Apps Job."
  value       = azurerm_container_app_job.this["worker"].name
}

output "worker_max_executions" {
  description = "Worker executions KEDA may run at once, derived from the vendor budget."
  value       = local.worker_max_executions
}

output "identity_client_id" {
  description = "Client id of the user-assigned identity (the jobs' AZURE_CLIENT_ID); grant it database access when PostgreSQL uses Entra ID."
  value       = azurerm_user_assigned_identity.this.client_id
}

output "identity_principal_id" {
  description = "Principal (object) id of the user-assigned identity, for further role assignments."
  value       = azurerm_user_assigned_identity.this.principal_id
}

output "servicebus_namespace" {
  description = "Fully qualified Service Bus namespace (the jobs' AZURE_SERVICE_BUS_NAMESPACE)."
  value       = local.servicebus_host
}

output "work_items_queue_name" {
  description = "Name of the work-items queue."
  value       = azurerm_servicebus_queue.work_items.name
}

output "storage_account_url" {
  description = "Blob endpoint of the storage account holding the watermark (the jobs' AZURE_STORAGE_ACCOUNT_URL)."
  value       = azurerm_storage_account.this.primary_blob_endpoint
}

output "log_analytics_workspace_id" {
  description = "Workspace (customer) id for log queries: az monitor log-analytics query -w <this>."
  value       = azurerm_log_analytics_workspace.this.workspace_id
}

output "container_app_environment_id" {
  description = "Resource id of the Container Apps environment."
  value       = azurerm_container_app_environment.this.id
}
