// One conformance suite per port: the same tests run against every backend, so a backend can
// only pass by keeping the same promises as the others. Each backend gets its own describe
// block whose fixture is opened once before its tests and closed after them (also when they
// fail), and every test name starts with the backend's name, so a failure says which one broke.
import { after, before, describe, test, type TestContext } from 'node:test';

export interface Backend<F, C extends string = never> {
  /** Shown in the describe block and in front of every test name, e.g. "PGlite". */
  name: string;
  /** Opens what the suite's tests use; once, before this backend's first test. */
  open(): Promise<F>;
  /** Releases it after this backend's last test. */
  close?(fixture: F): Promise<void>;
  /** Capabilities this backend does not have, each with the reason; a test that needs one is skipped, giving it. */
  lacks?: Partial<Record<C, string>>;
}

export interface TestOptions<C extends string> {
  /** Capabilities the test relies on; on a backend that lacks one the test is skipped with the backend's reason. */
  needs?: C[];
}

export type ConformanceTest<F> = (fixture: F, t: TestContext) => Promise<void>;

export interface Suite<F, C extends string> {
  readonly backend: Backend<F, C>;
  test(name: string, fn: ConformanceTest<F>): void;
  test(name: string, options: TestOptions<C>, fn: ConformanceTest<F>): void;
}

/** Declares `suite` once per backend: `describe("<port>: <backend>")` with tests named "[<backend>] …". */
export function forEachBackend<F, C extends string = never>(
  port: string,
  backends: readonly Backend<F, C>[],
  suite: (s: Suite<F, C>) => void,
): void {
  for (const backend of backends) {
    describe(`${port}: ${backend.name}`, () => {
      let fixture: F | undefined;
      before(async () => {
        fixture = await backend.open();
      });
      after(async () => {
        if (fixture !== undefined) await backend.close?.(fixture);
      });

      function declare(name: string, optionsOrFn: TestOptions<C> | ConformanceTest<F>, maybeFn?: ConformanceTest<F>): void {
        const options = typeof optionsOrFn === 'function' ? {} : optionsOrFn;
        const fn = typeof optionsOrFn === 'function' ? optionsOrFn : maybeFn;
        if (fn === undefined) throw new TypeError(`conformance test "${name}" has no body`);
        const missing = (options.needs ?? []).filter((need) => backend.lacks?.[need] !== undefined);
        const skip =
          missing.length > 0 ? missing.map((need) => `${backend.name} lacks ${need}: ${backend.lacks?.[need]}`).join('; ') : false;
        test(`[${backend.name}] ${name}`, { skip }, async (t) => {
          // before() failing already fails the test; this only narrows the type.
          if (fixture === undefined) throw new Error(`the ${backend.name} fixture did not open`);
          await fn(fixture, t);
        });
      }

      suite({ backend, test: declare });
    });
  }
}

/** Runs every cleanup even when some fail (in reverse order: what was opened last closes first), then reports the failures. */
export async function runCleanups(cleanups: (() => Promise<unknown>)[]): Promise<void> {
  const failures: unknown[] = [];
  for (const cleanup of cleanups.splice(0).reverse()) {
    await cleanup().catch((err: unknown) => failures.push(err));
  }
  if (failures.length > 0) throw new AggregateError(failures, 'cleanup failed');
}
