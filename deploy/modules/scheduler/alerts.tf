# Someone hears about a night without a published run. The scheduler logs one JSON line per
# event to the console (ContainerAppConsoleLogs_CL); a run that succeeds ends with a line whose
# msg starts "run finished". No such line within a day and a grace period means the execution
# failed, was stopped, never started (image pull, secrets, scheduling) or crashed before logging.

locals {
  alert_action_groups = concat(azurerm_monitor_action_group.this[*].id, var.alert_action_group_ids)

  # Pino writes level names (log.ts), so a failure is level "error" in the JSON of Log_s.
  missed_run_query = <<-KQL
    ContainerAppConsoleLogs_CL
    | where TimeGenerated > ago(${24 + var.missed_run_grace_hours}h)
    | where ContainerJobName_s == "${local.scheduler_job_name}"
    | extend entry = parse_json(Log_s)
    | where tostring(entry.msg) startswith "run finished"
  KQL

  error_query = <<-KQL
    ContainerAppConsoleLogs_CL
    | where ContainerJobName_s in ("${local.scheduler_job_name}", "${local.worker_job_name}")
    | extend entry = parse_json(Log_s)
    | where tostring(entry.level) in ("error", "fatal")
    | project TimeGenerated, ContainerJobName_s, runId = tostring(entry.runId), msg = tostring(entry.msg)
  KQL
}

resource "azurerm_monitor_action_group" "this" {
  count               = length(var.alert_email_addresses) > 0 ? 1 : 0
  name                = "${var.name_prefix}-alerts"
  resource_group_name = var.resource_group_name
  short_name          = substr(replace(var.name_prefix, "-", ""), 0, 12)
  tags                = var.tags

  dynamic "email_receiver" {
    for_each = var.alert_email_addresses
    content {
      name                    = "email-${email_receiver.key}"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }
}

locals {
  alerts = {
    # Fires when no scheduled run has finished in the last 24 h + grace: failed or did not run.
    missed_run = {
      name                 = "${var.name_prefix}-scheduler-missed-run"
      description          = "No scheduler execution logged \"run finished\" in the last ${24 + var.missed_run_grace_hours} hours: the nightly run failed or did not run. See docs/runbook.md."
      severity             = 1
      evaluation_frequency = "PT1H"
      # The query sets its own, longer time range; the window only has to contain it.
      window_duration = "P2D"
      query           = local.missed_run_query
      operator        = "LessThan"
      threshold       = 1
    }

    # Fires at once on any error line of the scheduler or a worker (a failed run, a
    # dead-lettered partition), without waiting for the missed-run window.
    errors = {
      name                 = "${var.name_prefix}-errors"
      description          = "The scheduler or a worker logged an error. See docs/runbook.md."
      severity             = 2
      evaluation_frequency = "PT15M"
      window_duration      = "PT15M"
      query                = local.error_query
      operator             = "GreaterThan"
      threshold            = 0
    }
  }
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "this" {
  for_each = local.alerts

  name                    = each.value.name
  resource_group_name     = var.resource_group_name
  location                = var.location
  description             = each.value.description
  severity                = each.value.severity
  enabled                 = true
  scopes                  = [azurerm_log_analytics_workspace.this.id]
  evaluation_frequency    = each.value.evaluation_frequency
  window_duration         = each.value.window_duration
  auto_mitigation_enabled = true
  tags                    = var.tags

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Count"
    operator                = each.value.operator
    threshold               = each.value.threshold

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  dynamic "action" {
    for_each = length(local.alert_action_groups) > 0 ? [local.alert_action_groups] : []
    content {
      action_groups = action.value
    }
  }
}
