# The scheduler: once a night, one replica, exits when the run is published.
resource "azurerm_container_app_job" "scheduler" {
  name                         = local.scheduler_job_name
  location                     = var.location
  resource_group_name          = var.resource_group_name
  container_app_environment_id = azurerm_container_app_environment.this.id
  replica_timeout_in_seconds   = var.scheduler_replica_timeout_seconds
  replica_retry_limit          = var.scheduler_retry_limit
  tags                         = var.tags

  # One execution, one replica: the lock and the guards protect against overlap anyway, but
  # a second replica would only ever log "skipped".
  schedule_trigger_config {
    cron_expression          = var.schedule_cron
    parallelism              = 1
    replica_completion_count = 1
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.this.id]
  }

  registry {
    server   = data.azurerm_container_registry.this.login_server
    identity = azurerm_user_assigned_identity.this.id
  }

  # Secrets by Key Vault reference only, read with the user-assigned identity.
  secret {
    name                = "nivoda-password"
    key_vault_secret_id = local.nivoda_password_secret_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  secret {
    name                = "database-url"
    key_vault_secret_id = local.database_url_secret_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  template {
    container {
      name   = "scheduler"
      image  = local.image
      cpu    = var.scheduler_cpu
      memory = var.scheduler_memory
      # The image's CMD: `node dist/index.js` (the default command is `run`).

      dynamic "env" {
        for_each = merge(local.common_env, {
          NIVODA_MAX_REQUESTS_PER_SECOND = tostring(var.scheduler_requests_per_second)
        })
        content {
          name  = env.key
          value = env.value
        }
      }

      env {
        name        = "NIVODA_PASSWORD"
        secret_name = "nivoda-password"
      }

      env {
        name        = "DATABASE_URL"
        secret_name = "database-url"
      }
    }
  }

  # The job cannot start before its identity may pull the image and read the secrets.
  depends_on = [
    azurerm_role_assignment.acr_pull,
    azurerm_role_assignment.key_vault_secrets,
    azurerm_role_assignment.watermark_blob,
    azurerm_role_assignment.queue_sender,
  ]
}

# The workers: started by KEDA while work items wait on the queue, each one working
# partitions until the queue has been idle for a while, at most as many at once as the
# vendor budget allows.
resource "azurerm_container_app_job" "worker" {
  name                         = local.worker_job_name
  location                     = var.location
  resource_group_name          = var.resource_group_name
  container_app_environment_id = azurerm_container_app_environment.this.id
  replica_timeout_in_seconds   = var.worker_replica_timeout_seconds
  replica_retry_limit          = var.worker_retry_limit
  tags                         = var.tags

  event_trigger_config {
    parallelism              = 1
    replica_completion_count = 1

    scale {
      min_executions              = 0
      max_executions              = local.worker_max_executions
      polling_interval_in_seconds = var.worker_polling_interval_seconds

      rules {
        name             = "work-items-length"
        custom_rule_type = "azure-servicebus"
        metadata = {
          namespace    = azurerm_servicebus_namespace.this.name
          queueName    = local.queue_name
          messageCount = tostring(var.worker_messages_per_execution)
        }
        # KEDA's azure-servicebus scaler here authenticates only with a connection string.
        authentication {
          secret_name       = "servicebus-listen"
          trigger_parameter = "connection"
        }
      }
    }
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.this.id]
  }

  registry {
    server   = data.azurerm_container_registry.this.login_server
    identity = azurerm_user_assigned_identity.this.id
  }

  # Secrets by Key Vault reference only, read with the user-assigned identity.
  secret {
    name                = "nivoda-password"
    key_vault_secret_id = local.nivoda_password_secret_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  secret {
    name                = "database-url"
    key_vault_secret_id = local.database_url_secret_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  secret {
    name                = "servicebus-listen"
    key_vault_secret_id = azurerm_key_vault_secret.keda_connection.versionless_id
    identity            = azurerm_user_assigned_identity.this.id
  }

  template {
    container {
      name    = "worker"
      image   = local.image
      cpu     = var.worker_cpu
      memory  = var.worker_memory
      command = ["node", "dist/index.js", "worker", "--idle-exit", tostring(var.worker_idle_exit_seconds)]

      dynamic "env" {
        for_each = merge(local.common_env, {
          NIVODA_MAX_REQUESTS_PER_SECOND = tostring(var.worker_requests_per_second)
        })
        content {
          name  = env.key
          value = env.value
        }
      }

      env {
        name        = "NIVODA_PASSWORD"
        secret_name = "nivoda-password"
      }

      env {
        name        = "DATABASE_URL"
        secret_name = "database-url"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.worker_budget >= var.worker_requests_per_second
      error_message = "The vendor budget left after the scheduler's share (nivoda_global_requests_per_second - scheduler_requests_per_second) must hold at least one worker_requests_per_second."
    }
  }

  depends_on = [
    azurerm_role_assignment.acr_pull,
    azurerm_role_assignment.key_vault_secrets,
    azurerm_role_assignment.watermark_blob,
    azurerm_role_assignment.queue_receiver,
  ]
}
