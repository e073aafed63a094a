# The scheduler's image; the same image runs the worker (`node dist/index.js worker`) through
# the Container Apps job's command override. Node 24 is the supported LTS line in production;
# the code also stays compatible with Node 20, which the development machines run.

# Build stage: all dependencies (TypeScript), then `npm run build`, which also copies the SQL
# migrations into dist/db/migrations.
FROM node:24.22.3-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# Runtime stage: production dependencies and the compiled scheduler only (no sources, tests,
# simulator or dev tools). Configuration and secrets come from the job's environment at run
# time, never from the image.
FROM node:24.22.3-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
# The node image's unprivileged user (uid 1000); the files above stay root-owned and read-only to it.
USER node
# Exec form: node is PID 1 and receives Container Apps' SIGTERM itself (the scheduler stops
# publishing after the batch in flight, releases its lease and exits 1 well inside the 30 s
# grace period).
CMD ["node", "dist/index.js"]
