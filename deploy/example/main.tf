# An example root: the provider configuration lives here, never in the module. Copy this
# folder, fill in terraform.tfvars (see terraform.tfvars.example) and keep the state in an
# encrypted remote backend (it holds the KEDA rule's listen-only connection string).

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }
}

provider "azurerm" {
  features {}
  # ARM_SUBSCRIPTION_ID (or az login's default) names the subscription.
  # The storage account allows no shared keys: data-plane calls use Entra ID.
  storage_use_azuread = true
}

resource "azurerm_resource_group" "this" {
  name     = var.resource_group_name
  location = var.location
}

module "scheduler" {
  source = "../modules/scheduler"

  name_prefix         = var.name_prefix
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = var.tags

  container_registry_name                = var.container_registry_name
  container_registry_resource_group_name = var.container_registry_resource_group_name
  image                                  = var.image

  key_vault_name                = var.key_vault_name
  key_vault_resource_group_name = var.key_vault_resource_group_name

  nivoda_endpoint = var.nivoda_endpoint
  nivoda_username = var.nivoda_username

  servicebus_namespace_name = var.servicebus_namespace_name
  storage_account_name      = var.storage_account_name

  alert_email_addresses = var.alert_email_addresses
}
