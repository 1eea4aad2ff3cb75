# syntax=docker/dockerfile:1
# forgelink: one image for the API, the worker and the migrations (the command picks which).
# Stage 1 builds dist/ (tsc + the workflow bundle) with every dependency; stage 2 installs the
# production dependencies only; the final stage holds dist/ and those, and runs as a non-root user.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY api ./api
COPY activities ./activities
COPY lib ./lib
COPY workflows ./workflows
COPY worker ./worker
COPY scripts/build.ts ./scripts/build.ts
RUN npm run build

FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json LICENSE ./
# The image's `node` user (uid 1000); the files above stay root-owned and read-only to it.
USER 1000:1000
EXPOSE 8080
# node runs as PID 1 (exec form, no shell), so SIGTERM reaches it and forgelink's own handlers drain
# and exit. Under plain `docker run`, add `--init` so an init reaps zombies; Kubernetes needs nothing.
CMD ["node", "dist/api/main.js"]
# Worker:     node dist/worker/main.js
# Migrations: node dist/lib/db/migrate-cli.js
