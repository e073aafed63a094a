// Offline checks of the deployment: the Terraform in deploy/ (terraform fmt and validate where
// the binary exists, and the pieces that matter read from the parsed HCL), a scan of every
// Terraform file for secret literals, and the Dockerfile's points (issue #9 items 1, 3, 4).
// No provider can be downloaded and no Docker engine runs here, so these are static checks.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { accessSync, constants, cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Copy, DockerfileParser, type Instruction } from 'dockerfile-ast';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DEPLOY = path.join(ROOT, 'deploy');
const MODULE = path.join(DEPLOY, 'modules', 'scheduler');

// Loaded through require with a local signature: the package's typings pull the DOM library
// into the whole program's type check.
type Hcl = Record<string, unknown>;
const { convertFiles } = createRequire(import.meta.url)('@cdktf/hcl2json') as {
  convertFiles: (directory: string) => Promise<Hcl>;
};

// ---------------------------------------------------------------------------------------------
// terraform fmt / validate (only where the binary is installed)

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

const TERRAFORM = findOnPath('terraform');
const SKIP_NOTICE = 'terraform is not on PATH: fmt and validate checks not run';

interface Diagnostic {
  severity: string;
  summary: string;
  detail?: string;
}

let scratch: string;

before(() => {
  scratch = mkdtempSync(path.join(os.tmpdir(), 'deploy-test-'));
});
after(() => rmSync(scratch, { recursive: true, force: true }));

/**
 * Runs terraform with everything it could write (CLI config, plugin cache, .terraform,
 * checkpoint) in a throwaway directory, and never calls home.
 */
function terraform(args: string[], cwd: string, dataDir: string) {
  const cliConfig = path.join(scratch, 'empty.tfrc');
  writeFileSync(cliConfig, '');
  const result = spawnSync(TERRAFORM ?? 'terraform', args, {
    cwd,
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH,
      HOME: dataDir,
      TF_DATA_DIR: dataDir,
      TF_CLI_CONFIG_FILE: cliConfig,
      TF_IN_AUTOMATION: '1',
      CHECKPOINT_DISABLE: '1',
    },
  });
  assert.equal(result.error, undefined, `terraform ${args.join(' ')} did not start`);
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A copy of deploy/ in the scratch directory, so no check can ever write into the repository. */
function copyOfDeploy(name: string): string {
  const target = path.join(scratch, name);
  cpSync(DEPLOY, target, { recursive: true });
  return target;
}

/**
 * `terraform validate -json` without `init`. The example root calls a local module, which
 * init would only record in a manifest: write that manifest into the data directory instead.
 */
function validate(dir: string, modules: Record<string, string> = {}): Diagnostic[] {
  const dataDir = mkdtempSync(path.join(scratch, 'tfdata-'));
  const entries = [
    { Key: '', Source: '', Dir: '.' },
    ...Object.entries(modules).map(([key, dir]) => ({ Key: key, Source: dir, Dir: dir })),
  ];
  mkdirSync(path.join(dataDir, 'modules'));
  writeFileSync(path.join(dataDir, 'modules', 'modules.json'), JSON.stringify({ Modules: entries }));
  const { stdout } = terraform(['validate', '-json', '-no-color'], dir, dataDir);
  const report = JSON.parse(stdout) as { diagnostics: Diagnostic[] };
  return report.diagnostics;
}

/** What a clean configuration reports without init: the provider cannot be found, nothing else. */
function onlyMissingProvider(diagnostics: Diagnostic[]): boolean {
  return diagnostics.length === 1 && diagnostics[0]?.summary === 'Missing required provider';
}

const summaries = (diagnostics: Diagnostic[]) => diagnostics.map((d) => d.summary);

describe('terraform (offline)', () => {
  it('deploy/ is terraform fmt clean, and fmt -check fails on a misformatted file', (t: TestContext) => {
    if (!TERRAFORM) return t.skip(SKIP_NOTICE);
    const copy = copyOfDeploy('fmt');
    const clean = terraform(['fmt', '-check', '-recursive', '-no-color', '.'], copy, mkdtempSync(path.join(scratch, 'tfdata-')));
    assert.equal(clean.status, 0, `terraform fmt -check lists: ${clean.stdout}${clean.stderr}`);

    const misformatted = path.join(copy, 'modules', 'scheduler', 'outputs.tf');
    writeFileSync(misformatted, readFileSync(misformatted, 'utf8').replace(/ {2}value( +)=/, 'value =    '));
    const dirty = terraform(['fmt', '-check', '-recursive', '-no-color', '.'], copy, mkdtempSync(path.join(scratch, 'tfdata-')));
    assert.notEqual(dirty.status, 0);
    assert.match(dirty.stdout, /modules\/scheduler\/outputs\.tf/);
  });

  it('the module and the example root validate with nothing but the missing provider', (t: TestContext) => {
    if (!TERRAFORM) return t.skip(SKIP_NOTICE);
    const copy = copyOfDeploy('validate');
    const module = validate(path.join(copy, 'modules', 'scheduler'));
    assert.ok(onlyMissingProvider(module), `module: ${JSON.stringify(module)}`);
    const example = validate(path.join(copy, 'example'), { scheduler: '../modules/scheduler' });
    assert.ok(onlyMissingProvider(example), `example: ${JSON.stringify(example)}`);
  });

  it('a broken configuration reports more than the missing provider (so the check above can fail)', (t: TestContext) => {
    if (!TERRAFORM) return t.skip(SKIP_NOTICE);
    const breakages: [string, string, RegExp][] = [
      [
        'syntax error',
        'resource "azurerm_resource_group" "broken" {\n  name = \n}\n',
        /Invalid expression|Argument or block definition required/,
      ],
      ['unknown block type', 'resourc "azurerm_resource_group" "broken" {\n}\n', /Unsupported block type/],
      [
        'duplicate resource',
        'resource "azurerm_user_assigned_identity" "this" {\n  name = "twice"\n}\n',
        /Duplicate resource "azurerm_user_assigned_identity" configuration/,
      ],
    ];
    for (const [what, text, expected] of breakages) {
      const copy = copyOfDeploy(`broken-${what.replace(/\W+/g, '-')}`);
      const moduleDir = path.join(copy, 'modules', 'scheduler');
      writeFileSync(path.join(moduleDir, 'broken.tf'), text);
      const diagnostics = validate(moduleDir);
      assert.ok(!onlyMissingProvider(diagnostics), `${what}: ${JSON.stringify(diagnostics)}`);
      assert.ok(
        summaries(diagnostics).some((s) => expected.test(s)),
        `${what}: expected ${String(expected)}, got ${JSON.stringify(summaries(diagnostics))}`,
      );
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The parsed HCL

type Block = Record<string, unknown>;

function asBlocks(value: unknown, what: string): Block[] {
  assert.ok(Array.isArray(value) && value.length > 0, `${what}: expected a block`);
  return value as Block[];
}

function one(value: unknown, what: string): Block {
  const blocks = asBlocks(value, what);
  assert.equal(blocks.length, 1, `${what}: expected exactly one block`);
  return blocks[0] as Block;
}

function resourcesOf(config: Hcl, type: string): Record<string, unknown> {
  const resources = (config.resource ?? {}) as Record<string, Record<string, unknown>>;
  return resources[type] ?? {};
}

function resource(config: Hcl, type: string, name: string): Block {
  return one(resourcesOf(config, type)[name], `${type}.${name}`);
}

function locals(config: Hcl): Block {
  return Object.assign({}, ...asBlocks(config.locals, 'locals')) as Block;
}

/** What a root name (each, or a dynamic block's iterator) stands for while one instance is read. */
type Scope = Record<string, { key: unknown; value: unknown }>;

/**
 * Fills in `${root.key}`, `${root.value…}` and `${root.value…[*]}` where the whole string is such
 * a reference; any other string is left as written.
 */
function resolve(value: unknown, scope: Scope): unknown {
  if (Array.isArray(value)) return value.map((v) => resolve(v, scope));
  if (value !== null && typeof value === 'object') return expand(value as Block, scope);
  if (typeof value !== 'string') return value;
  const match = /^\$\{(\w+)\.(key|value)((?:\.\w+)*)(\[\*\])?\}$/.exec(value);
  const bound = match ? scope[match[1] as string] : undefined;
  if (!match || !bound) return value;
  let found: unknown = match[2] === 'key' ? bound.key : bound.value;
  for (const attribute of (match[3] ?? '').split('.').slice(1)) {
    assert.ok(found !== null && typeof found === 'object' && attribute in found, `${value}: no attribute ${attribute}`);
    found = (found as Block)[attribute];
  }
  return match[4] ? (found === null ? [] : [found]) : found;
}

/**
 * A block as Terraform builds it: references resolved, and each dynamic block whose for_each
 * resolves (to a list or a literal map) replaced by the blocks it makes. A dynamic block over an
 * expression (merge(…)) stays under `dynamic`.
 */
function expand(block: Block, scope: Scope): Block {
  const result: Block = {};
  for (const [key, value] of Object.entries(block)) if (key !== 'dynamic') result[key] = resolve(value, scope);
  const kept: Block = {};
  for (const [name, dynamics] of Object.entries((block.dynamic ?? {}) as Block)) {
    const dynamic = one(dynamics, `dynamic "${name}"`);
    const forEach = resolve(dynamic.for_each, scope);
    if (typeof forEach === 'string') {
      kept[name] = [dynamic];
      continue;
    }
    assert.ok(forEach !== null && typeof forEach === 'object', `dynamic "${name}": for_each is ${String(forEach)}`);
    const content = Array.isArray(dynamic.content) ? one(dynamic.content, `dynamic "${name}" content`) : (dynamic.content as Block);
    const made = Object.entries(forEach as Block).map(([key, value]) => expand(content, { ...scope, [name]: { key, value } }));
    if (made.length > 0) result[name] = [...((result[name] as Block[] | undefined) ?? []), ...made];
  }
  if (Object.keys(kept).length > 0) result.dynamic = kept;
  return result;
}

interface Instance {
  /** The for_each key, or the resource name where there is no for_each. */
  key: string;
  body: Block;
}

/** Every instance of every resource of a type, each as Terraform would build it. */
function instancesOf(config: Hcl, type: string): Instance[] {
  return Object.entries(resourcesOf(config, type)).flatMap(([name, blocks]) => {
    const { for_each: forEach, ...body } = one(blocks, `${type}.${name}`);
    if (forEach === undefined) return [{ key: name, body: expand(body, {}) }];
    // A literal map, or a local holding one.
    const local = typeof forEach === 'string' ? /^\$\{local\.(\w+)\}$/.exec(forEach)?.[1] : undefined;
    const map = local === undefined ? forEach : locals(config)[local];
    assert.ok(map !== null && typeof map === 'object' && !Array.isArray(map), `${type}.${name}: for_each is not a literal map`);
    return Object.entries(map as Block).map(([key, value]) => ({ key, body: expand(body, { each: { key, value } }) }));
  });
}

function instance(config: Hcl, type: string, key: string): Block {
  const matching = instancesOf(config, type).filter((i) => i.key === key);
  assert.equal(matching.length, 1, `one ${type} instance "${key}"`);
  return (matching[0] as Instance).body;
}

const IDENTITY = '${azurerm_user_assigned_identity.this.id}';

/** Every .tf (and tfvars example) file under deploy/. */
function terraformFiles(dir: string = DEPLOY): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === '.terraform' ? [] : terraformFiles(full);
    return /\.tf$|\.tfvars(\.example)?$/.test(entry.name) ? [full] : [];
  });
}

/** Shapes a secret takes when someone pastes it into a file. */
const SECRET_LITERALS: [string, RegExp][] = [
  ['a password assignment', /\b\w*(?:password|passwd|pwd)\s*=\s*"(?!\$\{)[^"]+"/i],
  ['a storage account key', /AccountKey\s*=/i],
  ['a Service Bus shared access key', /SharedAccessKey\s*=/i],
  ['a SAS signature', /[?&]sig=[A-Za-z0-9%+/=]{10,}/],
  ['credentials in a URL', /\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@"]+:[^\s@/"]+@/i],
  ['a key-like base64 string', /["'][A-Za-z0-9+/]{40,}={0,2}["']/],
];

function secretLiterals(text: string): string[] {
  return SECRET_LITERALS.filter(([, pattern]) => pattern.test(text)).map(([what]) => what);
}

describe('terraform module (parsed HCL)', () => {
  let config: Hcl;
  before(async () => {
    config = await convertFiles(MODULE);
  });

  it('declares azurerm ~> 4.x, and no provider configuration inside the module', async () => {
    const terraformBlock = one(config.terraform, 'terraform');
    const providers = one(terraformBlock.required_providers, 'required_providers') as Record<string, { source: string; version: string }>;
    assert.equal(providers.azurerm?.source, 'hashicorp/azurerm');
    assert.match(providers.azurerm?.version ?? '', /^~> 4\.\d+$/);
    assert.equal(config.provider, undefined, 'provider blocks belong in the root module');
    const example = await convertFiles(path.join(DEPLOY, 'example'));
    assert.ok(example.provider, 'the example root configures the provider');
    const moduleCall = one((example.module as Record<string, unknown>).scheduler, 'module.scheduler');
    assert.equal(moduleCall.source, '../modules/scheduler');
  });

  it('documents every variable and output', () => {
    for (const kind of ['variable', 'output'] as const) {
      const declared = (config[kind] ?? {}) as Record<string, unknown>;
      assert.ok(Object.keys(declared).length > 0, `no ${kind}s`);
      for (const [name, blocks] of Object.entries(declared)) {
        const description = one(blocks, `${kind}.${name}`).description;
        assert.ok(typeof description === 'string' && description.length >= 10, `${kind} "${name}" has no description`);
      }
    }
  });

  it('schedules the scheduler at 0 2 * * * with one replica, a replica timeout and a retry limit', () => {
    const job = instance(config, 'azurerm_container_app_job', 'scheduler');
    const trigger = one(job.schedule_trigger_config, 'schedule_trigger_config');
    assert.equal(trigger.cron_expression, '${var.schedule_cron}');
    const variables = config.variable as Record<string, unknown>;
    assert.equal(one(variables.schedule_cron, 'variable.schedule_cron').default, '0 2 * * *');
    assert.equal(trigger.parallelism, 1);
    assert.equal(trigger.replica_completion_count, 1);
    assert.equal(job.replica_timeout_in_seconds, '${var.scheduler_replica_timeout_seconds}');
    assert.equal(job.replica_retry_limit, '${var.scheduler_retry_limit}');
    assert.ok(Number(one(variables.scheduler_replica_timeout_seconds, 'timeout').default) > 0);
    assert.equal(job.event_trigger_config, undefined);
    assert.equal(job.manual_trigger_config, undefined);
  });

  it('runs both jobs, and pulls their image, with the user-assigned identity', () => {
    const identity = resource(config, 'azurerm_user_assigned_identity', 'this');
    assert.ok(identity.name);
    assert.deepEqual(
      instancesOf(config, 'azurerm_container_app_job')
        .map((i) => i.key)
        .sort(),
      ['scheduler', 'worker'],
    );
    for (const name of ['scheduler', 'worker']) {
      const job = instance(config, 'azurerm_container_app_job', name);
      const jobIdentity = one(job.identity, `${name}.identity`);
      assert.equal(jobIdentity.type, 'UserAssigned');
      assert.deepEqual(jobIdentity.identity_ids, [IDENTITY]);
      const registry = one(job.registry, `${name}.registry`);
      assert.equal(registry.identity, IDENTITY);
      assert.equal(registry.password_secret_name, undefined, 'no registry password');
      assert.equal(registry.username, undefined, 'no registry user');
    }
  });

  it('grants the identity exactly the roles it needs, each on its own resource', () => {
    const principal = '${azurerm_user_assigned_identity.this.principal_id}';
    const roles = instancesOf(config, 'azurerm_role_assignment').map((i) => i.body);
    for (const role of roles) assert.equal(role.principal_id, principal);
    const scopeOf = (roleName: string) => {
      const matching = roles.filter((r) => r.role_definition_name === roleName);
      assert.equal(matching.length, 1, `one "${roleName}" assignment`);
      return matching[0] as Block;
    };
    assert.equal(scopeOf('Storage Blob Data Contributor').scope, '${azurerm_storage_container.watermarks.resource_manager_id}');
    assert.equal(scopeOf('Azure Service Bus Data Sender').scope, '${azurerm_servicebus_queue.work_items.id}');
    assert.equal(scopeOf('Azure Service Bus Data Receiver').scope, '${azurerm_servicebus_queue.work_items.id}');
    assert.equal(scopeOf('AcrPull').scope, '${data.azurerm_container_registry.this.id}');
    // Per secret, not on the whole vault.
    const secretScopes = roles.filter((r) => r.role_definition_name === 'Key Vault Secrets User').map((r) => r.scope);
    assert.deepEqual(secretScopes.sort(), [
      '${azurerm_key_vault_secret.keda_connection.resource_versionless_id}',
      '${data.azurerm_key_vault.this.id}/secrets/${var.database_url_secret_name}',
      '${data.azurerm_key_vault.this.id}/secrets/${var.nivoda_password_secret_name}',
    ]);
    assert.equal(roles.length, 7, 'no role beyond these five (Key Vault Secrets User once per secret)');
    assert.equal(resource(config, 'azurerm_storage_container', 'watermarks').name, '${local.watermark_container}');
    assert.equal(locals(config).watermark_container, 'watermarks');
  });

  it('creates the work-items queue with duplicate detection (≥ 1 h), a max delivery count and dead-lettering on expiry', () => {
    const namespace = resource(config, 'azurerm_servicebus_namespace', 'this');
    assert.equal(namespace.sku, 'Standard');
    const queue = resource(config, 'azurerm_servicebus_queue', 'work_items');
    assert.equal(queue.name, '${local.queue_name}');
    assert.equal(locals(config).queue_name, 'work-items');
    assert.equal(queue.requires_duplicate_detection, true);
    assert.equal(queue.duplicate_detection_history_time_window, '${var.duplicate_detection_window}');
    const window = one((config.variable as Record<string, unknown>).duplicate_detection_window, 'window');
    assert.match(String(window.default), /^(PT([1-9]|1\d|2[0-3])H|P[1-7]D)$/);
    assert.equal(queue.max_delivery_count, '${var.max_delivery_count}');
    assert.equal(queue.dead_lettering_on_message_expiration, true);
    const keda = resource(config, 'azurerm_servicebus_queue_authorization_rule', 'keda');
    assert.deepEqual([keda.listen, keda.send, keda.manage], [true, false, false], 'the KEDA rule only listens');
  });

  it('gives the jobs their secrets only by Key Vault reference, read with the identity', () => {
    const expected: Record<string, string[]> = {
      scheduler: ['database-url', 'nivoda-password'],
      worker: ['database-url', 'nivoda-password', 'servicebus-listen'],
    };
    for (const [name, secretNames] of Object.entries(expected)) {
      const job = instance(config, 'azurerm_container_app_job', name);
      const secrets = asBlocks(job.secret, `${name}.secret`);
      assert.deepEqual(secrets.map((s) => s.name).sort(), secretNames);
      for (const secret of secrets) {
        assert.equal(secret.identity, IDENTITY, `${name}: secret ${String(secret.name)} read with the identity`);
        assert.match(String(secret.key_vault_secret_id), /^\$\{(local\.\w+_secret_id|azurerm_key_vault_secret\.\w+\.versionless_id)\}$/);
        assert.equal(secret.value, undefined, `${name}: secret ${String(secret.name)} carries a value`);
      }
      const container = one(one(job.template, 'template').container, 'container');
      const secretEnv = asBlocks(container.env, `${name}.env`);
      assert.deepEqual(secretEnv.map((e) => [e.name, e.secret_name]).sort(), [
        ['DATABASE_URL', 'database-url'],
        ['NIVODA_PASSWORD', 'nivoda-password'],
      ]);
    }
    const l = locals(config);
    assert.match(String(l.nivoda_password_secret_id), /^\$\{local\.key_vault_secret_url\}\//);
    assert.match(String(l.database_url_secret_id), /^\$\{local\.key_vault_secret_url\}\//);
    // The secret values themselves are never read: no data source for a secret exists.
    assert.deepEqual(Object.keys((config.data ?? {}) as Block).sort(), ['azurerm_container_registry', 'azurerm_key_vault']);
  });

  it('configures managed identity through the environment, without connection strings', () => {
    const merged = String(locals(config).common_env);
    // merge(var.extra_env, {…}): the module's own keys are the second argument.
    for (const key of ['AZURE_STORAGE_ACCOUNT_URL', 'AZURE_SERVICE_BUS_NAMESPACE', 'AZURE_CLIENT_ID', 'NODE_ENV'])
      assert.ok(merged.includes(key), `common_env sets ${key}`);
    assert.ok(merged.includes('azurerm_user_assigned_identity.this.client_id'));
    assert.ok(!/CONNECTION_STRING/.test(merged), 'no connection string in the environment');
    // The worker's last allowed delivery is the queue's max delivery count, not a default that differs.
    assert.match(merged, /WORKER_MAX_DELIVERIES\s*=\s*tostring\(var\.max_delivery_count\)/);
    for (const name of ['scheduler', 'worker']) {
      const container = one(one(instance(config, 'azurerm_container_app_job', name).template, 'template').container, 'container');
      const dynamicEnv = one((container.dynamic as Record<string, unknown>).env, `${name}.dynamic env`);
      assert.match(String(dynamicEnv.for_each), /^\$\{merge\(local\.common_env,/);
    }
  });

  it('scales the worker job with KEDA on the work-items queue, bounded by the vendor budget', () => {
    const job = instance(config, 'azurerm_container_app_job', 'worker');
    const trigger = one(job.event_trigger_config, 'event_trigger_config');
    assert.equal(trigger.parallelism, 1);
    assert.equal(trigger.replica_completion_count, 1);
    const scale = one(trigger.scale, 'scale');
    assert.equal(scale.min_executions, 0);
    assert.equal(scale.max_executions, '${local.worker_max_executions}');
    const l = locals(config);
    assert.match(String(l.worker_max_executions), /floor\(local\.worker_budget \/ var\.worker_requests_per_second\)/);
    assert.match(String(l.worker_budget), /var\.nivoda_global_requests_per_second/);
    const rule = one(scale.rules, 'rules');
    assert.equal(rule.custom_rule_type, 'azure-servicebus');
    const metadata = rule.metadata as Block;
    assert.equal(metadata.queueName, '${local.queue_name}');
    assert.equal(metadata.namespace, '${azurerm_servicebus_namespace.this.name}');
    const auth = one(rule.authentication, 'authentication');
    assert.equal(auth.trigger_parameter, 'connection');
    assert.ok(
      asBlocks(job.secret, 'secret').some((s) => s.name === auth.secret_name),
      'the scale rule uses a declared secret',
    );
    const kedaSecret = resource(config, 'azurerm_key_vault_secret', 'keda_connection');
    assert.equal(kedaSecret.value, '${azurerm_servicebus_queue_authorization_rule.keda.primary_connection_string}');
    const container = one(one(job.template, 'template').container, 'container');
    assert.deepEqual((container.command as unknown[]).slice(0, 4), ['node', 'dist/index.js', 'worker', '--idle-exit']);
    assert.equal(one((config.variable as Record<string, unknown>).worker_idle_exit_seconds, 'idle').default, 60);
  });

  it('alerts on Log Analytics when a scheduled run fails or does not run', () => {
    const rule = instance(config, 'azurerm_monitor_scheduled_query_rules_alert_v2', 'missed_run');
    assert.deepEqual(rule.scopes, ['${azurerm_log_analytics_workspace.this.id}']);
    const criteria = one(rule.criteria, 'criteria');
    assert.equal(criteria.query, '${local.missed_run_query}');
    assert.equal(criteria.operator, 'LessThan');
    assert.equal(criteria.threshold, 1);
    const query = String(locals(config).missed_run_query);
    assert.match(query, /ContainerAppConsoleLogs_CL/);
    assert.match(query, /startswith "run finished"/);
    assert.match(query, /local\.scheduler_job_name/);
    const errors = one(instance(config, 'azurerm_monitor_scheduled_query_rules_alert_v2', 'errors').criteria, 'errors criteria');
    assert.deepEqual([errors.query, errors.operator, errors.threshold], ['${local.error_query}', 'GreaterThan', 0]);
    assert.match(String(locals(config).error_query), /local\.worker_job_name/);
    const workspace = resource(config, 'azurerm_log_analytics_workspace', 'this');
    const environment = resource(config, 'azurerm_container_app_environment', 'this');
    assert.ok(workspace.retention_in_days);
    assert.equal(environment.log_analytics_workspace_id, '${azurerm_log_analytics_workspace.this.id}');
  });

  it('holds no secret literal in any Terraform file', () => {
    const files = terraformFiles();
    assert.ok(files.length >= 8, `found ${files.length} files`);
    for (const file of files) {
      assert.deepEqual(secretLiterals(readFileSync(file, 'utf8')), [], `${path.relative(ROOT, file)} holds a secret literal`);
    }
  });

  it('the secret scan recognises each shape it looks for', () => {
    const samples = [
      'password = "hunter2"',
      'admin_password = "s3cret"',
      'value = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc"',
      'value = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=abc"',
      'url = "https://a.blob.core.windows.net/c?sv=2024&sig=abcdefghijklmnop"',
      'value = "postgres://user:pass@db.example.com:5432/ingest"',
      'key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq=="',
    ];
    for (const sample of samples) assert.notDeepEqual(secretLiterals(sample), [], `not caught: ${sample}`);
    assert.deepEqual(secretLiterals('nivoda_password_secret_name = "nivoda-password"'), []);
    assert.deepEqual(secretLiterals('password = "${var.password}"'), []);
  });
});

// ---------------------------------------------------------------------------------------------
// The Dockerfile

interface Stage {
  from: string;
  name: string | null;
  instructions: Instruction[];
}

function stagesOf(text: string): Stage[] {
  const stages: Stage[] = [];
  for (const instruction of DockerfileParser.parse(text).getInstructions()) {
    if (instruction.getKeyword() === 'FROM') {
      const args = instruction.getArguments().map((a) => a.getValue());
      const asIndex = args.findIndex((a) => a.toUpperCase() === 'AS');
      stages.push({ from: args[0] ?? '', name: asIndex >= 0 ? (args[asIndex + 1] ?? null) : null, instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${instruction.getKeyword()} before the first FROM`);
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return stages;
}

const args = (i: Instruction) => i.getArguments().map((a) => a.getValue());
const of = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.getKeyword() === keyword);

/** The points of issue #9 item 1; returns what is wrong (empty when nothing is). */
function dockerfileProblems(text: string): string[] {
  const problems: string[] = [];
  const stages = stagesOf(text);
  if (stages.length < 2) return ['not a multi-stage build'];
  const build = stages[0] as Stage;
  const runtime = stages.at(-1) as Stage;
  if (!/^node:24[\w.-]*-slim$/.test(runtime.from)) problems.push(`runtime stage is FROM ${runtime.from}, not node:24…-slim`);
  if (!of(build, 'RUN').some((r) => /\bnpm ci\b/.test(r.getArgumentsContent() ?? ''))) problems.push('build stage does not run npm ci');
  if (!of(build, 'RUN').some((r) => /\bnpm run build\b/.test(r.getArgumentsContent() ?? '')))
    problems.push('build stage does not run npm run build');
  const runtimeRuns = of(runtime, 'RUN').map((r) => r.getArgumentsContent() ?? '');
  if (!runtimeRuns.some((r) => /\bnpm ci\b[^&|;]*--omit=dev/.test(r))) problems.push('runtime stage does not run npm ci --omit=dev');
  if (runtimeRuns.some((r) => /\bnpm (install|i|ci)\b(?![^&|;]*--omit=dev)/.test(r)))
    problems.push('runtime stage installs dev dependencies');

  const users = of(runtime, 'USER').map((u) => args(u)[0] ?? '');
  const lastUser = users.at(-1);
  if (!lastUser || /^(root|0)(:|$)/.test(lastUser)) problems.push('runtime stage runs as root');

  const envs = stages.flatMap((s) => of(s, 'ENV'));
  const runtimeEnv = of(runtime, 'ENV').map((e) => args(e).join(' '));
  if (!runtimeEnv.some((e) => /^NODE_ENV[= ]production$/.test(e))) problems.push('runtime stage does not set NODE_ENV=production');
  const secretName = /PASSWORD|SECRET|TOKEN|KEY|CONNECTION_STRING|DATABASE_URL/i;
  for (const instruction of [...envs, ...stages.flatMap((s) => of(s, 'ARG'))]) {
    const content = instruction.getArgumentsContent() ?? '';
    if (secretName.test(content) || secretLiterals(content).length > 0)
      problems.push(`${instruction.getKeyword()} carries a secret: ${content}`);
  }

  const cmds = of(runtime, 'CMD');
  const cmd = cmds.at(-1)?.getArgumentsContent() ?? '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(cmd);
  } catch {
    parsed = undefined;
  }
  if (JSON.stringify(parsed) !== JSON.stringify(['node', 'dist/index.js']))
    problems.push(`CMD is not exec-form ["node", "dist/index.js"]: ${cmd}`);
  if (of(runtime, 'ENTRYPOINT').length > 0) problems.push('runtime stage sets an ENTRYPOINT');

  if (of(runtime, 'ADD').length > 0) problems.push('runtime stage uses ADD');
  for (const copy of of(runtime, 'COPY')) {
    const from = copy instanceof Copy ? copy.getFromFlag()?.getValue() : undefined;
    const sources = args(copy).slice(0, -1);
    const fromBuild = from !== undefined && stages.some((s) => s !== runtime && s.name === from);
    const ok = fromBuild
      ? sources.every((s) => /^\/app\/dist\/?$/.test(s))
      : sources.every((s) => ['package.json', 'package-lock.json', '.npmrc'].includes(s));
    if (!ok) problems.push(`runtime stage copies more than dist/ and the package manifests: COPY ${args(copy).join(' ')}`);
  }
  return problems;
}

describe('Dockerfile', () => {
  const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');

  it('builds in one stage and runs Node 24 slim, production dependencies and dist/ only, as a non-root user', () => {
    assert.deepEqual(dockerfileProblems(dockerfile), []);
    const stages = stagesOf(dockerfile);
    assert.equal(stages.length, 2);
    assert.match(stages[1]?.from ?? '', /^node:24\.\d+\.\d+-bookworm-slim$/, 'a pinned Node 24 tag');
  });

  it('the lint catches each point it checks', () => {
    const breakages: [string, (text: string) => string, RegExp][] = [
      ['single stage', (d) => d.slice(d.indexOf('FROM node:24.22.3-bookworm-slim AS runtime')), /multi-stage/],
      ['old Node', (d) => d.replace(/FROM node:24\.22\.3-bookworm-slim AS runtime/, 'FROM node:20-slim AS runtime'), /not node:24/],
      ['full image', (d) => d.replace(/FROM node:24\.22\.3-bookworm-slim AS runtime/, 'FROM node:24 AS runtime'), /not node:24/],
      ['dev dependencies', (d) => d.replace('npm ci --omit=dev', 'npm ci'), /--omit=dev|dev dependencies/],
      ['root', (d) => d.replace('USER node', 'USER root'), /as root/],
      ['no user', (d) => d.replace('USER node', ''), /as root/],
      ['no NODE_ENV', (d) => d.replace('ENV NODE_ENV=production', ''), /NODE_ENV/],
      ['shell-form CMD', (d) => d.replace('CMD ["node", "dist/index.js"]', 'CMD node dist/index.js'), /exec-form/],
      ['sources copied', (d) => d.replace('COPY --from=build /app/dist ./dist', 'COPY --from=build /app ./'), /more than dist/],
      ['context copied', (d) => d.replace('COPY --from=build /app/dist ./dist', 'COPY . .'), /more than dist/],
      ['secret ENV', (d) => d.replace('ENV NODE_ENV=production', 'ENV NODE_ENV=production NIVODA_PASSWORD=hunter2'), /secret/],
      ['secret ARG', (d) => d.replace('WORKDIR /app\nCOPY package.json', 'ARG DATABASE_URL\nWORKDIR /app\nCOPY package.json'), /secret/],
    ];
    for (const [what, change, expected] of breakages) {
      const broken = change(dockerfile);
      assert.notEqual(broken, dockerfile, `${what}: the mutation did not apply`);
      const problems = dockerfileProblems(broken);
      assert.ok(
        problems.some((p) => expected.test(p)),
        `${what}: expected ${String(expected)}, got ${JSON.stringify(problems)}`,
      );
    }
  });

  it('.dockerignore admits only what the build copies (never .env, .data or node_modules)', () => {
    const lines = readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    assert.equal(lines[0], '*', 'an allow-list: everything is excluded first');
    const admitted = lines.slice(1).map((l) => {
      assert.ok(l.startsWith('!'), `only re-inclusions after "*": ${l}`);
      return l.slice(1).replace(/\/$/, '');
    });
    for (const forbidden of ['.env', '.data', 'node_modules', 'dist', '.git', 'test', 'deploy'])
      assert.ok(!admitted.includes(forbidden), `${forbidden} is admitted`);
    const copied = stagesOf(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))
      .flatMap((s) => of(s, 'COPY'))
      .filter((c) => !(c instanceof Copy && c.getFromFlag()))
      .flatMap((c) => args(c).slice(0, -1));
    for (const source of copied) assert.ok(admitted.includes(source), `the build copies ${source}, which .dockerignore excludes`);
  });
});
