// memory_search and memory_get with memory-core's names, argument schemas and result shapes
// (OpenClaw 2026.9.6), answered by ragd, so agents' prompts keep working when ragd owns the slot.
import { RagdError } from "./client.ts";
import type { RagdMemoryManager } from "./manager.ts";

export const MEMORY_SEARCH_PARAMETERS = {
  type: "object",
  properties: {
    query: { type: "string" },
    maxResults: { type: "integer", minimum: 1 },
    minScore: { type: "number" },
    corpus: { type: "string", enum: ["memory", "wiki", "all", "sessions"] },
  },
  required: ["query"],
  additionalProperties: false,
} as const;

export const MEMORY_GET_PARAMETERS = {
  type: "object",
  properties: {
    path: { type: "string" },
    from: { type: "integer", minimum: 1 },
    lines: { type: "integer", minimum: 1 },
    corpus: { type: "string", enum: ["memory", "wiki", "all"] },
  },
  required: ["path"],
  additionalProperties: false,
} as const;

const SOURCES = "MEMORY.md, USER.md and the files under memory/ (plus configured extra paths)";

export const MEMORY_SEARCH_DESCRIPTION =
  `Mandatory recall step: search ${SOURCES} before answering questions about prior work, decisions, dates, people, `
  + "preferences, or todos. Hits come from ragd (local hybrid retrieval, reranked by a cross-encoder within a time "
  + "limit) with their path and line span; use memory_get to read more lines around a hit. corpus=wiki and "
  + "corpus=sessions are not served by ragd. If the response has disabled=true or unavailable=true, tell the user "
  + "and include the warning and action.";

export const MEMORY_GET_DESCRIPTION =
  `Safe exact excerpt read from ${SOURCES}. Defaults to a bounded excerpt when lines are omitted and includes `
  + "truncation/continuation info (nextFrom) when more content exists. status=ok means the excerpt was read; "
  + "status=not_found means the file is not (or not yet) indexed; status=error means the read failed.";

export type ToolResult = { content: { type: "text"; text: string }[]; details: unknown };

export function jsonResult(payload: unknown): ToolResult {
  return { content: [{ type: "text", text: JSON.stringify(payload, null, 2) }], details: payload };
}

export type CitationsMode = "on" | "off" | "auto";

/** memory-core's rule: "auto" cites in direct chats, not in groups or channels. */
export function includeCitations(mode: CitationsMode, sessionKey?: string): boolean {
  if (mode === "on") return true;
  if (mode === "off") return false;
  const rest = (sessionKey ?? "").toLowerCase().split(":").slice(2);
  return !rest.includes("group") && !rest.includes("channel");
}

/** The answer memory-core gives when search cannot run, with ragd's reason and what to do. */
export function unavailableResult(error: unknown): Record<string, unknown> {
  const message = error instanceof Error ? error.message : String(error);
  const code = error instanceof RagdError ? error.code : undefined;
  const down = code === "UNAVAILABLE";
  const timedOut = code === "DEADLINE_EXCEEDED";
  const warning = down
    ? "Memory search is unavailable because the ragd daemon is not running."
    : timedOut ? "Memory search did not finish within its time limit." : "Memory search is unavailable because ragd returned an error.";
  const action = down
    ? "Start the daemon with `ragd serve` (or point plugins.entries.ragd.config.address at it), then retry memory_search."
    : timedOut ? "Retry memory_search; if it keeps timing out, raise plugins.entries.ragd.config.deadlineMs or turn rerank off."
      : "Check `ragd status`, then retry memory_search.";
  return {
    results: [], disabled: true, unavailable: true, ...(timedOut ? { timedOut: true } : {}),
    error: message, warning, action, debug: { warning, action, error: message, ...(code ? { code } : {}) },
  };
}

type ManagerFor = () => Promise<RagdMemoryManager>;

function warnings(allCorpora: boolean, indexing: string | undefined): { warning?: string } {
  const parts = [
    ...(allCorpora ? ["Only memory files are searched: the wiki corpus is not served by the ragd memory plugin."] : []),
    ...(indexing ? [indexing] : []),
  ];
  return parts.length ? { warning: parts.join(" ") } : {};
}

function positiveInt(params: Record<string, unknown>, name: string): number | undefined {
  const v = params[name];
  if (v === undefined || v === null) return undefined;
  const n = typeof v === "string" ? Number(v) : v;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
  return n;
}

export function createMemorySearchTool(params: { manager: ManagerFor; citations: () => CitationsMode; sessionKey?: string }) {
  return {
    label: "Memory Search",
    name: "memory_search",
    description: MEMORY_SEARCH_DESCRIPTION,
    parameters: MEMORY_SEARCH_PARAMETERS,
    async execute(_toolCallId: string, raw: unknown, signal?: AbortSignal): Promise<ToolResult> {
      const args = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
      const query = typeof args.query === "string" ? args.query.trim() : "";
      if (!query) throw new Error("query required");
      const maxResults = positiveInt(args, "maxResults");
      const minScore = typeof args.minScore === "number" && Number.isFinite(args.minScore) ? args.minScore : undefined;
      const corpus = args.corpus;
      if (corpus !== undefined && !["memory", "wiki", "all", "sessions"].includes(corpus as string)) {
        throw new Error("corpus must be one of: memory, wiki, all, sessions");
      }
      if (corpus === "sessions" || corpus === "wiki") {
        const warning = `The ${corpus} corpus is not served by the ragd memory plugin; only memory files are searched.`;
        return jsonResult({ results: [], disabled: true, unavailable: true, warning, action: "Search with corpus=memory instead.", error: warning });
      }
      const started = Date.now();
      let manager: RagdMemoryManager;
      try {
        manager = await params.manager();
        // This search's own figures (the manager is shared by the agent's concurrent calls).
        let last: Record<string, any> = {};
        const results = await manager.search(query, {
          maxResults, minScore, sessionKey: params.sessionKey, signal, onDebug: (d) => { last = d; },
        });
        const cite = includeCitations(params.citations(), params.sessionKey);
        const degraded: string[] = last.degraded ?? [];
        return jsonResult({
          results: results.map((r) => ({
            ...r,
            corpus: "memory",
            ...(cite ? { snippet: `${r.snippet.trimEnd()}\n\nSource: ${r.citation}` } : { citation: undefined }),
          })),
          provider: "ragd",
          model: last.embedder || undefined,
          citations: params.citations(),
          mode: last.effectiveMode,
          ...(warnings(corpus === "all", manager.indexingWarning())),
          ...(degraded.length ? { degraded } : {}),
          debug: {
            backend: "ragd",
            searchMs: Date.now() - started,
            hits: results.length,
            candidates: last.candidates,
            reranked: last.reranked,
            rerankWindow: last.rerankWindow,
            deadlineMs: manager.config.deadlineMs,
            timingsMs: last.timingsMs,
          },
        });
      } catch (err) {
        if (signal?.aborted) throw err;
        return jsonResult(unavailableResult(err));
      }
    },
  };
}

export function createMemoryGetTool(params: { manager: ManagerFor }) {
  return {
    label: "Memory Get",
    name: "memory_get",
    description: MEMORY_GET_DESCRIPTION,
    parameters: MEMORY_GET_PARAMETERS,
    async execute(_toolCallId: string, raw: unknown, signal?: AbortSignal): Promise<ToolResult> {
      const args = (raw && typeof raw === "object" ? raw : {}) as Record<string, unknown>;
      const path = typeof args.path === "string" ? args.path.trim() : "";
      if (!path) throw new Error("path required");
      const from = positiveInt(args, "from");
      const lines = positiveInt(args, "lines");
      if (args.corpus !== undefined && !["memory", "wiki", "all"].includes(args.corpus as string)) {
        throw new Error("corpus must be one of: memory, wiki, all");
      }
      if (args.corpus === "wiki") {
        return jsonResult({ path, text: "", status: "error", code: "CORPUS_UNAVAILABLE", error: "the wiki corpus is not served by the ragd memory plugin" });
      }
      try {
        const manager = await params.manager();
        return jsonResult(await manager.readFile({ relPath: path, from, lines, signal }));
      } catch (err) {
        if (signal?.aborted) throw err;
        const code = (err as { code?: string }).code ?? "MEMORY_READ_FAILED";
        const message = (err as Error).message;
        return jsonResult({
          path, text: "", status: "error", code, error: message,
          ...(code === "UNAVAILABLE" ? { action: "Start the daemon with `ragd serve`, then retry memory_get." } : {}),
        });
      }
    },
  };
}

/** The system prompt's memory section (memory-core's is not registered when ragd owns the slot). */
export function buildMemoryPromptSection(params: { availableTools: Set<string>; citationsMode?: string }): string[] {
  const search = params.availableTools.has("memory_search");
  const get = params.availableTools.has("memory_get");
  if (!search && !get) return [];
  const how = search
    ? `Before answering anything about prior work, decisions, dates, people, preferences, or todos: run memory_search${get ? ", then memory_get for just the lines you need" : ""}. If nothing relevant comes back, say you checked.`
    : "To answer from a specific memory file, run memory_get for just the lines you need.";
  const cite = params.citationsMode === "off"
    ? "Citations are off: do not mention file paths or line numbers unless the user asks."
    : "Citations: add Source: <path#line> when it helps the user check a memory.";
  return ["## Memory Recall", how, "If a memory tool reports it is unavailable or partial, tell the user and pass on its action.", cite, ""];
}
