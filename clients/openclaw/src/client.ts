// A small promise-based client for ragd's gRPC API (proto/ragd/v1/ragd.proto) on @grpc/grpc-js.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const PLUGIN_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** ragd's wire contract for a plugin folder: the repository's proto/ragd/v1/ beside clients/openclaw
 * (a checkout, as `plugins install --link` uses it), else the copy `npm pack` puts in the package.
 * OpenClaw runs a captured copy of the plugin's code, so callers pass the folder it was installed from. */
export function findProto(rootDir?: string): string {
  const candidates = [...new Set([rootDir, PLUGIN_DIR])].filter((d): d is string => Boolean(d)).flatMap((d) => [
    join(d, "..", "..", "proto", "ragd", "v1", "ragd.proto"),
    join(d, "proto", "ragd", "v1", "ragd.proto"),
  ]);
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`ragd's proto/ragd/v1/ragd.proto is not beside the plugin (looked for ${candidates.join(", ")}): `
      + "install the plugin from a ragd checkout (clients/openclaw) or from a package made with npm pack");
  }
  return resolve(found);
}

export type Hit = {
  chunkId: number;
  path: string;
  startLine: number;
  endLine: number;
  page: number;
  heading: string[];
  snippet: string;
  score: number;
  retrievalScore: number;
  rerankScore?: number;
};

export type SearchResponse = {
  hits: Hit[];
  timingsMs: Record<string, number>;
  candidates: number;
  reranked: number;
  rerankWindow: number;
  models: { embedder: string; reranker: string };
  degraded: string[];
};

export type SearchRequest = {
  query: string;
  k?: number;
  rerank?: boolean;
  pathPrefixes?: string[];
  deadlineMs?: number;
  mode?: string;
};

export type RootStatus = { path: string; filesIndexed: number; filesPending: number; filesFailed: number; watching: boolean };

export type StatusResponse = {
  serving: boolean;
  filesIndexed: number;
  filesPending: number;
  filesFailed: number;
  chunks: number;
  roots: RootStatus[];
  models: { embedder: string; reranker: string };
  degraded: string[];
  version: string;
};

export type ReadFileResponse = { path: string; fromLine: number; lines: string[]; totalLines: number };

/** A failed call, with the gRPC status name and a message that says what to do. */
export class RagdError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "RagdError";
    this.code = code;
  }
}

/** unix:///p, unix:/p, /p, ./p, ~/p -> unix:///abs; tcp://h:p, h:p -> h:p (what grpc-js takes). */
export function grpcTarget(address: string): { target: string; isUnix: boolean } {
  let a = address.trim();
  if (a.startsWith("unix://")) a = a.slice("unix://".length);
  else if (a.startsWith("unix:")) a = a.slice("unix:".length);
  else if (a.startsWith("tcp://")) return { target: a.slice("tcp://".length), isUnix: false };
  else if (!a.startsWith("/") && !a.startsWith(".") && !a.startsWith("~")) return { target: a, isUnix: false };
  if (a.startsWith("~")) a = join(process.env.HOME ?? "", a.slice(1));
  return { target: `unix://${resolve(a)}`, isUnix: true };
}

const packages = new Map<string, grpc.GrpcObject>();

function ragdPackage(protoPath: string): grpc.GrpcObject {
  let pkg = packages.get(protoPath);
  if (!pkg) {
    const definition = protoLoader.loadSync(protoPath, {
      keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
    });
    pkg = grpc.loadPackageDefinition(definition);
    packages.set(protoPath, pkg);
  }
  return pkg;
}

type Unary = (request: unknown, metadata: grpc.Metadata, options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response: any) => void) => grpc.ClientUnaryCall;

export class RagdClient {
  readonly address: string;
  private readonly search: grpc.Client;
  private readonly index: grpc.Client;
  private readonly token?: string;
  private readonly tokenFile?: string;

  constructor(address: string, opts: { token?: string; tokenFile?: string; protoPath?: string } = {}) {
    this.address = address;
    this.token = opts.token;
    this.tokenFile = opts.tokenFile;
    const { target } = grpcTarget(address);
    const v1 = (ragdPackage(opts.protoPath ?? findProto()).ragd as grpc.GrpcObject).v1 as grpc.GrpcObject;
    const channelOptions = {
      "grpc.max_receive_message_length": 16 * 1024 * 1024,
      "grpc.max_send_message_length": 16 * 1024 * 1024,
      "grpc.enable_http_proxy": 0,
    };
    const SearchService = v1.Search as grpc.ServiceClientConstructor;
    const IndexService = v1.Index as grpc.ServiceClientConstructor;
    this.search = new SearchService(target, grpc.credentials.createInsecure(), channelOptions);
    // The Index service shares the Search client's channel.
    this.index = new IndexService(target, grpc.credentials.createInsecure(), { ...channelOptions, channelOverride: this.search.getChannel() });
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    let token = this.token;
    if (!token && this.tokenFile) {
      try {
        token = readFileSync(this.tokenFile.replace(/^~(?=\/)/, process.env.HOME ?? "~"), "utf8").trim();
      } catch (err) {
        throw new RagdError("UNAUTHENTICATED", `cannot read the ragd token file ${this.tokenFile}: ${(err as Error).message}`);
      }
    }
    if (token) md.set("authorization", `Bearer ${token}`);
    return md;
  }

  private call<T>(client: grpc.Client, method: string, request: unknown, timeoutMs: number, signal?: AbortSignal): Promise<T> {
    return new Promise<T>((resolvePromise, reject) => {
      if (signal?.aborted) {
        reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
        return;
      }
      let md: grpc.Metadata;
      try {
        md = this.metadata();
      } catch (err) {
        reject(err);
        return;
      }
      const fn = (client as unknown as Record<string, Unary>)[method].bind(client);
      const onAbort = () => call.cancel();
      const call = fn(request, md, { deadline: Date.now() + timeoutMs }, (error, response) => {
        signal?.removeEventListener("abort", onAbort);
        if (error) reject(this.explain(error, method, timeoutMs));
        else resolvePromise(response as T);
      });
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Turn a gRPC error into a message a person (or a model) can act on. */
  private explain(error: grpc.ServiceError, method: string, timeoutMs: number): RagdError {
    const code = grpc.status[error.code] ?? String(error.code);
    // grpc-js appends resolver notes to connection errors; they say nothing a user can act on.
    const details = (error.details || error.message).replace(/\s*Resolution note:.*$/s, "").replace(/[.;,]\s*$/, "");
    if (error.code === grpc.status.UNAVAILABLE) {
      return new RagdError(code, `the ragd daemon is not answering at ${this.address} (${details}); start it with \`ragd serve\``
        + " or set plugins.entries.ragd.config.address to where it listens");
    }
    if (error.code === grpc.status.DEADLINE_EXCEEDED) {
      return new RagdError(code, `ragd did not answer ${method} within ${(timeoutMs / 1000).toFixed(1)} s`);
    }
    if (error.code === grpc.status.UNAUTHENTICATED) {
      return new RagdError(code, `ragd refused the call: ${details}; set plugins.entries.ragd.config.tokenFile to the daemon's server.token_file`);
    }
    return new RagdError(code, `ragd ${method}: ${details}`);
  }

  async searchHits(req: SearchRequest, opts: { timeoutMs: number; signal?: AbortSignal }): Promise<SearchResponse> {
    const request: Record<string, unknown> = {
      query: req.query,
      k: req.k ?? 0,
      filters: { pathPrefixes: req.pathPrefixes ?? [] },
      deadlineMs: req.deadlineMs ?? 0,
      mode: req.mode ?? "",
    };
    if (req.rerank !== undefined) request.rerank = req.rerank;
    const r = await this.call<any>(this.search, "Search", request, opts.timeoutMs, opts.signal);
    return {
      hits: (r.hits ?? []).map((h: any): Hit => ({
        chunkId: Number(h.chunkId), path: h.path, startLine: h.startLine, endLine: h.endLine, page: h.page,
        heading: h.heading ?? [], snippet: h.snippet, score: h.score, retrievalScore: h.retrievalScore,
        ...(h._rerankScore === "rerankScore" ? { rerankScore: h.rerankScore } : {}),
      })),
      timingsMs: r.timingsMs ?? {},
      candidates: r.candidates,
      reranked: r.reranked,
      rerankWindow: r.rerankWindow,
      models: { embedder: r.models?.embedder ?? "", reranker: r.models?.reranker ?? "" },
      degraded: r.degraded ?? [],
    };
  }

  async readFile(path: string, fromLine: number, count: number, timeoutMs: number, signal?: AbortSignal): Promise<ReadFileResponse> {
    return await this.call<ReadFileResponse>(this.search, "ReadFile", { path, fromLine, count }, timeoutMs, signal);
  }

  async status(timeoutMs: number): Promise<StatusResponse> {
    return await this.call<StatusResponse>(this.index, "Status", {}, timeoutMs);
  }

  async listRoots(timeoutMs: number): Promise<string[]> {
    const r = await this.call<{ roots: { path: string }[] }>(this.index, "ListRoots", {}, timeoutMs);
    return (r.roots ?? []).map((root) => root.path);
  }

  async addRoot(path: string, timeoutMs: number): Promise<void> {
    await this.call(this.index, "AddRoot", { path }, timeoutMs);
  }

  close(): void {
    this.index.close();
    this.search.close();
  }
}
