variable "resource_group_name" {
  description = "Resource group the example creates for the pipeline."
  type        = string
}

variable "location" {
  description = "Azure region, e.g. \"westeurope\"."
  type        = string
}

variable "name_prefix" {
  description = "Prefix of the derived resource names (see the module)."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "container_registry_name" {
  description = "Existing Azure Container Registry holding the image."
  type        = string
}

variable "container_registry_resource_group_name" {
  description = "Resource group of the registry."
  type        = string
}

variable "image" {
  description = "Repository:tag of the image in the registry, e.g. \"nivoda-scheduler:1.4.0\"."
  type        = string
}

variable "key_vault_name" {
  description = "Existing Key Vault (Azure RBAC) holding the nivoda-password and database-url secrets."
  type        = string
}

variable "key_vault_resource_group_name" {
  description = "Resource group of the Key Vault."
  type        = string
}

variable "nivoda_endpoint" {
  description = "Nivoda GraphQL endpoint (https)."
  type        = string
}

variable "nivoda_username" {
  description = "Nivoda API user name (the password is a Key Vault secret)."
  type        = string
}

variable "servicebus_namespace_name" {
  description = "Globally unique Service Bus namespace name."
  type        = string
}

variable "storage_account_name" {
  description = "Globally unique storage account name (3-24 lower-case letters and digits)."
  type        = string
}

variable "alert_email_addresses" {
  description = "Who is e-mailed when a nightly run fails or does not run."
  type        = list(string)
  default     = []
}
