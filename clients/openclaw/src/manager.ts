// OpenClaw's MemorySearchManager contract (openclaw/plugin-sdk, 2026.9.6) served by a ragd daemon:
// one manager per agent, confined to that agent's memory files.
import { existsSync, statSync } from "node:fs";
import { RagdClient, RagdError, type SearchResponse, type StatusResponse } from "./client.ts";
import type { RagdPluginConfig } from "./config.ts";
import { type AgentScope, absolutePath, displayPath, inScope, pathPrefixes } from "./scope.ts";

// The shapes below mirror openclaw/plugin-sdk's MemorySearchResult, MemoryReadResult and
// MemoryProviderStatus (declared here so the plugin loads without importing OpenClaw).
export type MemorySearchResult = {
  path: string;
  startLine: number;
  endLine: number;
  score: number;
  vectorScore?: number;
  textScore?: number;
  snippet: string;
  source: "memory" | "sessions";
  citation?: string;
};

export type MemoryReadResult =
  | { status: "ok"; text: string; path: string; truncated?: boolean; from?: number; lines?: number; nextFrom?: number }
  | { status: "not_found"; text: ""; path: string };

export type MemoryProviderStatus = {
  backend: "builtin";
  provider: string;
  model?: string;
  files?: number;
  chunks?: number;
  dirty?: boolean;
  lastSyncError?: string;
  workspaceDir?: string;
  extraPaths?: string[];
  sources?: ("memory" | "sessions")[];
  fts?: { enabled: boolean; available: boolean; error?: string };
  vector?: { enabled: boolean; available?: boolean; storeAvailable?: boolean; semanticAvailable?: boolean; loadError?: string };
  custom?: Record<string, unknown>;
};

export type MemoryEmbeddingProbeResult = { ok: boolean; error?: string; checked?: boolean; cached?: boolean; checkedAtMs?: number };

export type SearchOptions = {
  maxResults?: number;
  minScore?: number;
  sessionKey?: string;
  lexicalOnly?: boolean;
  sources?: ("memory" | "sessions")[];
  signal?: AbortSignal;
  onDebug?: (debug: Record<string, unknown>) => void;
};

/** Lines memory_get returns when `lines` is not given, and the excerpt's character budget (as memory-core). */
export const DEFAULT_READ_LINES = 120;
export const DEFAULT_READ_MAX_CHARS = 12_000;
/** A gRPC call gets the search deadline plus this much for the trip and the answer. */
const CALL_MARGIN_MS = 2_000;
const CONTROL_TIMEOUT_MS = 5_000;
const ROOTS_RECHECK_MS = 30_000;

/** A citation as memory-core writes them: path#L3 or path#L3-L9. */
export function formatCitation(path: string, startLine: number, endLine: number): string {
  return startLine === endLine ? `${path}#L${startLine}` : `${path}#L${startLine}-L${endLine}`;
}

/** Registers each agent's folders as ragd roots, once per daemon: the daemon's list of roots is
 * read again every 30 s (a root removed with `ragd roots rm` comes back) and whenever one is missing. */
export class RootRegistrar {
  private known = new Set<string>();
  private checkedAt = 0;
  private readonly client: RagdClient;
  constructor(client: RagdClient) {
    this.client = client;
  }

  /** AddRoot for every existing folder of the scope not already inside a ragd root; returns those added. */
  async ensure(scope: AgentScope, force = false): Promise<string[]> {
    const wanted = scope.roots.filter((r) => existsSync(r) && statSync(r).isDirectory());
    const covered = (p: string) => [...this.known].some((root) => p === root || p.startsWith(`${root}/`));
    const fresh = Date.now() - this.checkedAt < ROOTS_RECHECK_MS;
    if (!force && fresh && wanted.every(covered)) return [];
    this.known = new Set(await this.client.listRoots(CONTROL_TIMEOUT_MS));
    this.checkedAt = Date.now();
    const added: string[] = [];
    for (const root of wanted) {
      if (covered(root)) continue;
      await this.client.addRoot(root, CONTROL_TIMEOUT_MS);
      this.known.add(root);
      added.push(root);
    }
    return added;
  }
}

export class RagdMemoryManager {
  private snapshot: StatusResponse | null = null;
  private lastError: string | undefined;
  private probedAt = 0;
  private lastResponse: SearchResponse | null = null;
  private indexingSince = 0;

  readonly client: RagdClient;
  readonly scope: AgentScope;
  readonly config: RagdPluginConfig;
  private readonly registrar: RootRegistrar;

  constructor(client: RagdClient, scope: AgentScope, config: RagdPluginConfig, registrar: RootRegistrar) {
    this.client = client;
    this.scope = scope;
    this.config = config;
    this.registrar = registrar;
  }

  /** Search the agent's memory files; hits carry their lines, a workspace-relative path and a citation. */
  async search(query: string, opts: SearchOptions = {}): Promise<MemorySearchResult[]> {
    if (opts.sources && !opts.sources.includes("memory")) return [];  // ragd holds no session transcripts
    const started = Date.now();
    await this.ensureRoots();
    const maxResults = Math.max(1, Math.floor(opts.maxResults ?? this.config.maxResults));
    const minScore = opts.minScore ?? this.config.minScore;
    const deadlineMs = this.config.deadlineMs;
    let response: SearchResponse;
    try {
      response = await this.client.searchHits({
        query,
        // A few more than asked, since hits are checked against the scope again below.
        k: Math.min(1000, maxResults + 4),
        rerank: opts.lexicalOnly ? false : this.config.rerank,
        mode: opts.lexicalOnly ? "lexical" : "",
        pathPrefixes: pathPrefixes(this.scope),
        deadlineMs,
      }, { timeoutMs: deadlineMs + CALL_MARGIN_MS, signal: opts.signal });
    } catch (err) {
      // An index with nothing in it yet is an empty answer, not a failure.
      if (err instanceof RagdError && err.code === "FAILED_PRECONDITION" && /empty/i.test(err.message)) return [];
      this.lastError = (err as Error).message;
      throw err;
    }
    this.lastError = undefined;
    this.lastResponse = response;
    opts.onDebug?.({
      backend: "builtin", configuredMode: "ragd", effectiveMode: response.reranked > 0 ? "hybrid+rerank" : "hybrid",
      searchMs: Date.now() - started, reranked: response.reranked, candidates: response.candidates,
      rerankWindow: response.rerankWindow, timingsMs: response.timingsMs, degraded: response.degraded,
      embedder: response.models.embedder,
    });
    return response.hits
      .filter((h) => inScope(this.scope, h.path) && h.score >= minScore)
      .slice(0, maxResults)
      .map((h) => {
        const path = displayPath(this.scope, h.path);
        return {
          path, startLine: h.startLine, endLine: h.endLine, score: h.score, snippet: h.snippet, source: "memory" as const,
          citation: formatCitation(path, h.startLine, h.endLine),
        };
      });
  }

  /** The last search's reranking and timing figures (for the tool's debug block). */
  lastSearch(): SearchResponse | null {
    return this.lastResponse;
  }

  /** A warning while folders this manager just registered may still be indexing (for a minute). */
  indexingWarning(): string | undefined {
    if (!this.indexingSince || Date.now() - this.indexingSince > 60_000) return undefined;
    return "ragd has just started indexing this agent's memory folders: results may be incomplete for a little while.";
  }

  /** Lines of one of the agent's memory files, read through ragd (so only indexed files inside a root). */
  async readFile(params: { relPath: string; from?: number; lines?: number; signal?: AbortSignal }): Promise<MemoryReadResult> {
    const rel = params.relPath.trim();
    if (!rel) throw new Error("path required");
    const abs = absolutePath(this.scope, rel);
    if (!inScope(this.scope, abs)) {
      throw Object.assign(new Error(`path is not one of this agent's memory files: ${rel}`), { code: "MEMORY_PATH_NOT_ALLOWED" });
    }
    await this.ensureRoots();
    const from = Math.max(1, Math.floor(params.from ?? 1));
    const count = Math.max(1, Math.floor(params.lines ?? DEFAULT_READ_LINES));
    let r;
    try {
      r = await this.client.readFile(abs, from, count, CONTROL_TIMEOUT_MS, params.signal);
    } catch (err) {
      if (err instanceof RagdError && err.code === "NOT_FOUND") return { status: "not_found", text: "", path: rel };
      throw err;
    }
    const lines = r.lines ?? [];
    // Keep whole lines within the character budget; say where to go on when there is more.
    let kept = 0;
    let chars = 0;
    for (const line of lines) {
      const next = chars + line.length + (kept > 0 ? 1 : 0);
      if (kept > 0 && next > DEFAULT_READ_MAX_CHARS) break;
      kept += 1;
      chars = next;
    }
    let text = lines.slice(0, kept).join("\n");
    if (text.length > DEFAULT_READ_MAX_CHARS) text = text.slice(0, DEFAULT_READ_MAX_CHARS);
    const more = from - 1 + kept < r.totalLines;
    const nextFrom = more ? from + kept : undefined;
    if (more) text += `\n\n[More lines follow. Call memory_get with from=${nextFrom} to continue.]`;
    return {
      status: "ok", text, path: displayPath(this.scope, abs), from, lines: kept,
      ...(more ? { truncated: true, nextFrom } : {}),
    };
  }

  /** OpenClaw reads status synchronously: this is the last probe's picture (probe first for a fresh one). */
  status(): MemoryProviderStatus {
    const s = this.snapshot;
    const up = s !== null && this.lastError === undefined;
    const files = s ? s.roots.filter((r) => this.scope.roots.includes(r.path)) : [];
    return {
      backend: "builtin",
      provider: "ragd",
      model: s?.models.embedder || undefined,
      files: files.length ? files.reduce((n, r) => n + Number(r.filesIndexed), 0) : Number(s?.filesIndexed ?? 0),
      chunks: Number(s?.chunks ?? 0),
      dirty: s ? Number(s.filesPending) > 0 : undefined,
      ...(this.lastError ? { lastSyncError: this.lastError } : {}),
      workspaceDir: this.scope.workspaceDir,
      extraPaths: this.scope.extraPaths,
      sources: ["memory"],
      fts: { enabled: true, available: up, ...(up ? {} : { error: this.lastError ?? "not checked" }) },
      vector: {
        enabled: true, available: up, storeAvailable: up, semanticAvailable: up,
        ...(up ? {} : { loadError: this.lastError ?? "not checked" }),
      },
      custom: {
        daemon: this.client.address,
        serving: s?.serving ?? false,
        reranker: s?.models.reranker || null,
        rerank: this.config.rerank,
        deadlineMs: this.config.deadlineMs,
        degraded: s?.degraded ?? [],
        version: s?.version,
        roots: this.scope.roots,
        ...(this.lastError ? { error: this.lastError } : {}),
      },
    };
  }

  /** Ask the daemon how it is; false (with the reason in status()) when it does not answer. */
  async probe(): Promise<boolean> {
    try {
      this.snapshot = await this.client.status(CONTROL_TIMEOUT_MS);
      this.lastError = this.snapshot.serving ? undefined : "ragd is still loading its models";
    } catch (err) {
      this.lastError = (err as Error).message;
    }
    this.probedAt = Date.now();
    return this.lastError === undefined;
  }

  getCachedEmbeddingAvailability(): MemoryEmbeddingProbeResult | null {
    if (!this.probedAt) return null;
    return { ok: this.lastError === undefined, ...(this.lastError ? { error: this.lastError } : {}), checked: true, cached: true, checkedAtMs: this.probedAt };
  }

  async probeEmbeddingAvailability(): Promise<MemoryEmbeddingProbeResult> {
    const ok = await this.probe();
    return { ok, ...(ok ? {} : { error: this.lastError }), checked: true, checkedAtMs: this.probedAt };
  }

  async probeVectorAvailability(): Promise<boolean> {
    return await this.probe();
  }

  async probeVectorStoreAvailability(): Promise<boolean> {
    return await this.probe();
  }

  /** ragd watches its roots and indexes by itself; sync makes sure the roots are registered and fresh. */
  async sync(params: { reason?: string; force?: boolean } = {}): Promise<void> {
    if ((await this.registrar.ensure(this.scope, params.force === true)).length > 0) this.indexingSince = Date.now();
    await this.probe();
  }

  async close(): Promise<void> {
    // The client is shared by every agent's manager and closed with the plugin.
  }

  private async ensureRoots(): Promise<void> {
    try {
      if ((await this.registrar.ensure(this.scope)).length > 0) this.indexingSince = Date.now();
    } catch (err) {
      this.lastError = (err as Error).message;
      throw err;
    }
  }
}
