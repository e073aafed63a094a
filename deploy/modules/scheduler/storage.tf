resource "azurerm_storage_account" "this" {
  name                     = var.storage_account_name
  location                 = var.location
  resource_group_name      = var.resource_group_name
  account_tier             = "Standard"
  account_replication_type = "ZRS"
  min_tls_version          = "TLS1_2"

  # Entra ID only: no account keys, no anonymous access. The watermark is read and written with
  # the managed identity (the provider needs storage_use_azuread = true, see the example root).
  shared_access_key_enabled       = false
  allow_nested_items_to_be_public = false
  https_traffic_only_enabled      = true

  blob_properties {
    # The watermark decides what the next run fetches: keep its earlier versions for repair.
    versioning_enabled = true
  }

  tags = var.tags
}

resource "azurerm_storage_container" "watermarks" {
  name                  = local.watermark_container
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}
