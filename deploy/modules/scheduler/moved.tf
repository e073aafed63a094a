# Earlier addresses of resources now created with for_each: an applied deployment is moved in
# place instead of being destroyed and re-created (a second, identical role assignment would
# be refused while the first still exists). Each block can go once every deployment has
# applied it.

moved {
  from = azurerm_container_app_job.scheduler
  to   = azurerm_container_app_job.this["scheduler"]
}

moved {
  from = azurerm_container_app_job.worker
  to   = azurerm_container_app_job.this["worker"]
}

moved {
  from = azurerm_monitor_scheduled_query_rules_alert_v2.missed_run
  to   = azurerm_monitor_scheduled_query_rules_alert_v2.this["missed_run"]
}

moved {
  from = azurerm_monitor_scheduled_query_rules_alert_v2.errors
  to   = azurerm_monitor_scheduled_query_rules_alert_v2.this["errors"]
}

moved {
  from = azurerm_role_assignment.acr_pull
  to   = azurerm_role_assignment.this["acr_pull"]
}

moved {
  from = azurerm_role_assignment.watermark_blob
  to   = azurerm_role_assignment.this["watermark_blob"]
}

moved {
  from = azurerm_role_assignment.queue_sender
  to   = azurerm_role_assignment.this["queue_sender"]
}

moved {
  from = azurerm_role_assignment.queue_receiver
  to   = azurerm_role_assignment.this["queue_receiver"]
}

moved {
  from = azurerm_role_assignment.key_vault_secrets["nivoda-password"]
  to   = azurerm_role_assignment.this["secret_nivoda_password"]
}

moved {
  from = azurerm_role_assignment.key_vault_secrets["database-url"]
  to   = azurerm_role_assignment.this["secret_database_url"]
}

moved {
  from = azurerm_role_assignment.key_vault_secrets["keda-connection"]
  to   = azurerm_role_assignment.this["secret_keda_connection"]
}
