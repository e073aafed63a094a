output "scheduler_job_name" {
  description = "Start a run by hand: az containerapp job start -n <this> -g <resource group>."
  value       = module.scheduler.scheduler_job_name
}

output "worker_job_name" {
  description = "The workers' event-driven job."
  value       = module.scheduler.worker_job_name
}

output "resource_group_name" {
  description = "Resource group of the pipeline."
  value       = azurerm_resource_group.this.name
}

output "log_analytics_workspace_id" {
  description = "Workspace id for az monitor log-analytics query."
  value       = module.scheduler.log_analytics_workspace_id
}

output "identity_client_id" {
  description = "Client id of the jobs' user-assigned identity."
  value       = module.scheduler.identity_client_id
}

output "storage_account_url" {
  description = "Blob endpoint holding the watermark (AZURE_STORAGE_ACCOUNT_URL for an operator shell)."
  value       = module.scheduler.storage_account_url
}

output "servicebus_namespace" {
  description = "Fully qualified Service Bus namespace (AZURE_SERVICE_BUS_NAMESPACE for an operator shell)."
  value       = module.scheduler.servicebus_namespace
}
