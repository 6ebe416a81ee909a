// The plugin's settings (plugins.entries.ragd.config), with defaults, and where the daemon listens.
import { homedir } from "node:os";
import { join } from "node:path";

/** The memory_search tool of OpenClaw 2026.9.6 gives up after 30 s; every search ends well before. */
export const OPENCLAW_MEMORY_SEARCH_TIMEOUT_MS = 30_000;
export const MAX_DEADLINE_MS = 25_000;

export type RootScope = "workspace" | "memory" | "none";

export type RagdPluginConfig = {
  /** unix:///path/ragd.sock, /path/ragd.sock, host:port or tcp://host:port. */
  address: string;
  /** File holding the bearer token the daemon wants over TCP (server.token_file). */
  tokenFile?: string;
  maxResults: number;
  minScore: number;
  /** Each search's time budget: ragd reranks what fits and answers on time. */
  deadlineMs: number;
  /** Rerank with ragd's cross-encoder (as many candidates as the deadline allows). */
  rerank: boolean;
  /** Which folder of each agent's workspace becomes a ragd root (see README). */
  rootScope: RootScope;
  /** More folders or files every agent searches (and which become roots). */
  paths: string[];
};

export const DEFAULTS = {
  maxResults: 6,
  minScore: 0,
  deadlineMs: 5_000,
  rerank: true,
  rootScope: "workspace" as RootScope,
};

/** ragd's own rule: $XDG_RUNTIME_DIR/ragd/ragd.sock, else <data_dir>/run/ragd.sock. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "ragd", "ragd.sock");
  const dataHome = env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  return join(dataHome, "ragd", "run", "ragd.sock");
}

export function defaultAddress(env: NodeJS.ProcessEnv = process.env): string {
  return env.RAGD_ADDRESS || `unix://${defaultSocketPath(env)}`;
}

function num(value: unknown, name: string, min: number, max: number, fallback: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    throw new Error(`plugins.entries.ragd.config.${name}: must be a number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Validate the raw plugin config (OpenClaw checks the manifest schema too; this also serves tests). */
export function resolveConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env): RagdPluginConfig {
  const c = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
  const str = (name: string): string | undefined => {
    const v = c[name];
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v !== "string") throw new Error(`plugins.entries.ragd.config.${name}: must be a string`);
    return v;
  };
  const scope = str("rootScope") ?? DEFAULTS.rootScope;
  if (!["workspace", "memory", "none"].includes(scope)) {
    throw new Error(`plugins.entries.ragd.config.rootScope: must be "workspace", "memory" or "none", got ${JSON.stringify(scope)}`);
  }
  const paths = c.paths ?? [];
  if (!Array.isArray(paths) || paths.some((p) => typeof p !== "string" || !p)) {
    throw new Error("plugins.entries.ragd.config.paths: must be a list of folder or file paths");
  }
  if (c.rerank !== undefined && typeof c.rerank !== "boolean") {
    throw new Error("plugins.entries.ragd.config.rerank: must be true or false");
  }
  return {
    address: str("address") ?? defaultAddress(env),
    tokenFile: str("tokenFile"),
    maxResults: Math.floor(num(c.maxResults, "maxResults", 1, 100, DEFAULTS.maxResults)),
    minScore: num(c.minScore, "minScore", 0, 1000, DEFAULTS.minScore),
    deadlineMs: Math.floor(num(c.deadlineMs, "deadlineMs", 100, MAX_DEADLINE_MS, DEFAULTS.deadlineMs)),
    rerank: c.rerank === undefined ? DEFAULTS.rerank : (c.rerank as boolean),
    rootScope: scope as RootScope,
    paths: paths as string[],
  };
}
