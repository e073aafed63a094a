# Both jobs run the same image with the same identity, settings and Key Vault secrets; what sets
# them apart is in local.jobs.
#  - The scheduler: once a night, one replica, exits when the run is published.
#  - The workers: started by KEDA while work items wait on the queue, each one working
#    partitions until the queue has been idle for a while, at most as many at once as the
#    vendor budget allows.
locals {
  jobs = {
    scheduler = {
      name                = local.scheduler_job_name
      replica_timeout     = var.scheduler_replica_timeout_seconds
      retry_limit         = var.scheduler_retry_limit
      cpu                 = var.scheduler_cpu
      memory              = var.scheduler_memory
      requests_per_second = var.scheduler_requests_per_second
      # The image's CMD: `node dist/index.js` (the default command is `run`).
      command         = null
      cron_expression = var.schedule_cron
      queue_scale     = null
      secrets = {
        "nivoda-password" = local.nivoda_password_secret_id
        "database-url"    = local.database_url_secret_id
      }
    }

    worker = {
      name                = local.worker_job_name
      replica_timeout     = var.worker_replica_timeout_seconds
      retry_limit         = var.worker_retry_limit
      cpu                 = var.worker_cpu
      memory              = var.worker_memory
      requests_per_second = var.worker_requests_per_second
      command             = ["node", "dist/index.js", "worker", "--idle-exit", tostring(var.worker_idle_exit_seconds)]
      cron_expression     = null
      queue_scale = {
        max_executions              = local.worker_max_executions
        polling_interval_in_seconds = var.worker_polling_interval_seconds
        message_count               = tostring(var.worker_messages_per_execution)
      }
      secrets = {
        "nivoda-password"   = local.nivoda_password_secret_id
        "database-url"      = local.database_url_secret_id
        "servicebus-listen" = azurerm_key_vault_secret.keda_connection.versionless_id
      }
    }
  }
}

resource "azurerm_container_app_job" "this" {
  for_each = local.jobs

  name                         = each.value.name
  location                     = var.location
  resource_group_name          = var.resource_group_name
  container_app_environment_id = azurerm_container_app_environment.this.id
  replica_timeout_in_seconds   = each.value.replica_timeout
  replica_retry_limit          = each.value.retry_limit
  tags                         = var.tags

  # One execution, one replica: the lock and the guards protect against overlap anyway, but
  # a second replica would only ever log "skipped".
  dynamic "schedule_trigger_config" {
    for_each = each.value.cron_expression[*]
    content {
      cron_expression          = schedule_trigger_config.value
      parallelism              = 1
      replica_completion_count = 1
    }
  }

  dynamic "event_trigger_config" {
    for_each = each.value.queue_scale[*]
    content {
      parallelism              = 1
      replica_completion_count = 1

      scale {
        min_executions              = 0
        max_executions              = event_trigger_config.value.max_executions
        polling_interval_in_seconds = event_trigger_config.value.polling_interval_in_seconds

        rules {
          name             = "work-items-length"
          custom_rule_type = "azure-servicebus"
          metadata = {
            namespace    = azurerm_servicebus_namespace.this.name
            queueName    = local.queue_name
            messageCount = event_trigger_config.value.message_count
          }
          # KEDA's azure-servicebus scaler here authenticates only with a connection string.
          authentication {
            secret_name       = "servicebus-listen"
            trigger_parameter = "connection"
          }
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
  dynamic "secret" {
    for_each = each.value.secrets
    content {
      name                = secret.key
      key_vault_secret_id = secret.value
      identity            = azurerm_user_assigned_identity.this.id
    }
  }

  template {
    container {
      name    = each.key
      image   = local.image
      cpu     = each.value.cpu
      memory  = each.value.memory
      command = each.value.command

      dynamic "env" {
        for_each = merge(local.common_env, {
          NIVODA_MAX_REQUESTS_PER_SECOND = tostring(each.value.requests_per_second)
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

  # A job cannot start before its identity may pull the image and read the secrets.
  depends_on = [azurerm_role_assignment.this]
}
