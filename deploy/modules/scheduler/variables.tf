variable "name_prefix" {
  description = "Prefix of every resource name the module derives (lower-case letters, digits and hyphens; keep it short: job names must stay under 32 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 characters of lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "resource_group_name" {
  description = "Existing resource group that receives every resource of the module."
  type        = string
}

variable "location" {
  description = "Azure region of the resources, e.g. \"westeurope\"."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource that supports them."
  type        = map(string)
  default     = {}
}

# --- Container image -------------------------------------------------------------------------

variable "container_registry_name" {
  description = "Existing Azure Container Registry that holds the image; the jobs pull from it with the user-assigned identity (AcrPull), never with an admin password."
  type        = string
}

variable "container_registry_resource_group_name" {
  description = "Resource group of the container registry."
  type        = string
}

variable "image" {
  description = "Repository and tag of the image inside the registry, e.g. \"nivoda-scheduler:1.4.0\" (built from the repository's Dockerfile). The worker job runs the same image."
  type        = string
}

# --- Secrets (Key Vault) -----------------------------------------------------------------------

variable "key_vault_name" {
  description = "Existing Key Vault (Azure RBAC authorization) that holds the secrets. Their values are set outside Terraform (az keyvault secret set), so they never enter the Terraform state."
  type        = string
}

variable "key_vault_resource_group_name" {
  description = "Resource group of the Key Vault."
  type        = string
}

variable "nivoda_password_secret_name" {
  description = "Name of the Key Vault secret that holds NIVODA_PASSWORD."
  type        = string
  default     = "nivoda-password"
}

variable "database_url_secret_name" {
  description = "Name of the Key Vault secret that holds DATABASE_URL (postgres://…)."
  type        = string
  default     = "database-url"
}

variable "keda_connection_secret_name" {
  description = "Name of the Key Vault secret the module writes with the listen-only connection string of the work-items queue, for the worker's KEDA scale rule (the azure-servicebus scaler takes no managed identity there)."
  type        = string
  default     = "work-items-listen-connection"
}

# --- Scheduler settings ------------------------------------------------------------------------

variable "nivoda_endpoint" {
  description = "NIVODA_ENDPOINT: the Nivoda GraphQL endpoint (https)."
  type        = string
}

variable "nivoda_username" {
  description = "NIVODA_USERNAME: the API user (not a secret; the password comes from Key Vault)."
  type        = string
}

variable "nivoda_query" {
  description = "NIVODA_QUERY: the JSON base filter merged into every query (CONTRACT §2); \"{}\" for none."
  type        = string
  default     = "{}"
}

variable "schedule_cron" {
  description = "Cron expression (UTC) of the scheduler job."
  type        = string
  default     = "0 2 * * *"
}

variable "scheduler_replica_timeout_seconds" {
  description = "Longest a scheduler execution may run before Container Apps stops it (SIGTERM, then SIGKILL 30 s later). A scan plus publish takes minutes; the lock lease (SCHEDULER_LOCK_TTL_SECONDS) is renewed meanwhile."
  type        = number
  default     = 1800
}

variable "scheduler_retry_limit" {
  description = "Retries of a failed scheduler execution. Safe because a retry either finds the lock still held (logs and exits 0), finishes the recorded but unpublished run with the same message ids (duplicate detection drops re-sends), or meets the full-run guards."
  type        = number
  default     = 1

  validation {
    condition     = var.scheduler_retry_limit >= 0 && var.scheduler_retry_limit <= 3
    error_message = "scheduler_retry_limit must be between 0 and 3."
  }
}

variable "scheduler_cpu" {
  description = "vCPU of a scheduler replica (Container Apps pairs: 0.5 with 1Gi, 1.0 with 2Gi, …)."
  type        = number
  default     = 0.5
}

variable "scheduler_memory" {
  description = "Memory of a scheduler replica."
  type        = string
  default     = "1Gi"
}

variable "extra_env" {
  description = "Further non-secret environment variables for both jobs (e.g. LOG_LEVEL, RECORDS_PER_WORKER). Secrets must go through Key Vault, never here."
  type        = map(string)
  default     = {}

  validation {
    condition     = length([for k in keys(var.extra_env) : k if can(regex("(PASSWORD|SECRET|TOKEN|KEY|CONNECTION_STRING|DATABASE_URL)", upper(k)))]) == 0
    error_message = "extra_env must not carry secrets (passwords, tokens, keys, connection strings, DATABASE_URL): put them in Key Vault."
  }
}

# --- Worker settings ---------------------------------------------------------------------------

variable "nivoda_global_requests_per_second" {
  description = "The vendor's rate limit for the whole account (NIVODA_GLOBAL_REQUESTS_PER_SECOND): every scheduler and worker process together stays under it."
  type        = number
  default     = 25
}

variable "scheduler_requests_per_second" {
  description = "Share of the vendor budget kept for the scheduler's own scan (its NIVODA_MAX_REQUESTS_PER_SECOND); the workers share the rest."
  type        = number
  default     = 5
}

variable "worker_requests_per_second" {
  description = "Request rate of one worker execution (its NIVODA_MAX_REQUESTS_PER_SECOND). The worker job's max executions is floor((global − scheduler share) / this), so all workers together stay under the vendor budget."
  type        = number
  default     = 5
}

variable "worker_idle_exit_seconds" {
  description = "A worker execution exits 0 once the queue has been empty this long (worker --idle-exit)."
  type        = number
  default     = 60
}

variable "worker_replica_timeout_seconds" {
  description = "Longest a worker execution may run. It works partitions until the queue is idle; a partition cut short is redelivered and resumes after its last committed page."
  type        = number
  default     = 7200
}

variable "worker_retry_limit" {
  description = "Retries of a failed worker execution. Redelivery of its unsettled message does not depend on this (Service Bus redelivers after the lock expires)."
  type        = number
  default     = 0
}

variable "worker_polling_interval_seconds" {
  description = "How often KEDA checks the work-items queue length."
  type        = number
  default     = 30
}

variable "worker_messages_per_execution" {
  description = "KEDA messageCount: queued messages per worker execution it starts (up to the max executions)."
  type        = number
  default     = 5
}

variable "worker_cpu" {
  description = "vCPU of a worker replica."
  type        = number
  default     = 0.5
}

variable "worker_memory" {
  description = "Memory of a worker replica."
  type        = string
  default     = "1Gi"
}

# --- Queue -------------------------------------------------------------------------------------

variable "servicebus_namespace_name" {
  description = "Globally unique name of the Service Bus namespace (Standard tier: duplicate detection needs it)."
  type        = string
}

variable "duplicate_detection_window" {
  description = "Duplicate detection history of the work-items queue (ISO-8601, 1 hour to 7 days). A re-sent work item (same messageId <runId>:<partitionId>) within it is dropped by Service Bus."
  type        = string
  default     = "P1D"

  validation {
    condition     = can(regex("^(PT([1-9]|1[0-9]|2[0-3])H|P[1-7]D)$", var.duplicate_detection_window))
    error_message = "duplicate_detection_window must be PT1H…PT23H or P1D…P7D (at least one hour)."
  }
}

variable "max_delivery_count" {
  description = "Deliveries of a work item before Service Bus dead-letters it (the worker then marks its partition failed)."
  type        = number
  default     = 5
}

variable "message_ttl" {
  description = "Time to live of a work item (ISO-8601); an expired one is dead-lettered, not dropped."
  type        = string
  default     = "P3D"
}

# --- Storage -----------------------------------------------------------------------------------

variable "storage_account_name" {
  description = "Globally unique name of the storage account that holds the watermark (3-24 lower-case letters and digits)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name must be 3-24 lower-case letters and digits."
  }
}

# --- Monitoring --------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the Log Analytics workspace that receives the jobs' console and system logs."
  type        = number
  default     = 30
}

variable "alert_email_addresses" {
  description = "E-mail addresses notified when a scheduled run fails or does not run, or a worker logs an error."
  type        = list(string)
  default     = []
}

variable "alert_action_group_ids" {
  description = "Further existing action groups (pager, chat) the alerts notify."
  type        = list(string)
  default     = []
}

variable "missed_run_grace_hours" {
  description = "The missed-run alert fires when no scheduler execution has logged \"run finished\" within the last 24 hours plus this grace."
  type        = number
  default     = 2
}
