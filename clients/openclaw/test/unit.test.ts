// Unit tests without a ragd daemon: config, scopes, what goes on the wire (a stand-in gRPC server
// records it), a daemon that is not running, and the tool contract against OpenClaw's memory-core.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { findProto, grpcTarget } from "../src/client.ts";
import { defaultSocketPath, MAX_DEADLINE_MS, OPENCLAW_MEMORY_SEARCH_TIMEOUT_MS, resolveConfig } from "../src/config.ts";
import { RagdMemoryPlugin } from "../src/plugin.ts";
import { buildScope, displayPath, inScope, pathPrefixes } from "../src/scope.ts";
import {
  buildMemoryPromptSection, createMemoryGetTool, createMemorySearchTool, includeCitations, MEMORY_GET_PARAMETERS,
  MEMORY_SEARCH_PARAMETERS,
} from "../src/tools.ts";

const tmp = mkdtempSync(join(tmpdir(), "ragd-openclaw-unit-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function workspace(name: string): string {
  const ws = join(tmp, name);
  mkdirSync(join(ws, "memory"), { recursive: true });
  writeFileSync(join(ws, "MEMORY.md"), "# Memory\n");
  return ws;
}

describe("config", () => {
  test("defaults: ragd's socket, a deadline well below OpenClaw's memory_search limit, reranking on", () => {
    const c = resolveConfig({}, { XDG_RUNTIME_DIR: "/run/user/7" });
    assert.equal(c.address, "unix:///run/user/7/ragd/ragd.sock");
    assert.equal(c.maxResults, 6);
    assert.equal(c.rerank, true);
    assert.equal(c.rootScope, "workspace");
    assert.ok(c.deadlineMs + 2_000 < OPENCLAW_MEMORY_SEARCH_TIMEOUT_MS);
    assert.ok(MAX_DEADLINE_MS + 2_000 < OPENCLAW_MEMORY_SEARCH_TIMEOUT_MS);
    assert.equal(defaultSocketPath({ XDG_DATA_HOME: "/d" }), "/d/ragd/run/ragd.sock");
    assert.equal(resolveConfig({}, { RAGD_ADDRESS: "127.0.0.1:7878" }).address, "127.0.0.1:7878");
  });

  test("the manifest's schema and the plugin agree on keys and defaults", () => {
    const manifest = JSON.parse(readFileSync(new URL("../openclaw.plugin.json", import.meta.url), "utf8"));
    assert.equal(manifest.id, "ragd");
    assert.equal(manifest.kind, "memory");
    const props = manifest.configSchema.properties;
    assert.deepEqual(Object.keys(props).sort(),
      ["address", "deadlineMs", "maxResults", "minScore", "paths", "rerank", "rootScope", "tokenFile"]);
    const c = resolveConfig({});
    for (const key of ["maxResults", "minScore", "deadlineMs", "rerank", "rootScope"] as const) {
      assert.equal(props[key].default, c[key], key);
    }
    assert.equal(props.deadlineMs.maximum, MAX_DEADLINE_MS);
  });

  test("bad values name the key", () => {
    assert.throws(() => resolveConfig({ deadlineMs: 60_000 }), /config\.deadlineMs: must be a number from 100 to 25000/);
    assert.throws(() => resolveConfig({ rootScope: "all" }), /config\.rootScope/);
    assert.throws(() => resolveConfig({ paths: "notes" }), /config\.paths/);
  });

  test("the proto is the repository's (a checkout) or the packed copy; a missing one is a clear error", () => {
    assert.equal(findProto(), join(new URL("../../..", import.meta.url).pathname, "proto", "ragd", "v1", "ragd.proto"));
    assert.equal(findProto("/nowhere/clients/openclaw"), findProto());
    const packed = join(tmp, "packed");
    mkdirSync(join(packed, "proto", "ragd", "v1"), { recursive: true });
    writeFileSync(join(packed, "proto", "ragd", "v1", "ragd.proto"), "syntax = \"proto3\";\n");
    assert.equal(findProto(packed), join(packed, "proto", "ragd", "v1", "ragd.proto"));
  });

  test("addresses become grpc-js targets", () => {
    assert.deepEqual(grpcTarget("unix:///a/b.sock"), { target: "unix:///a/b.sock", isUnix: true });
    assert.deepEqual(grpcTarget("unix:/a/b.sock"), { target: "unix:///a/b.sock", isUnix: true });
    assert.deepEqual(grpcTarget("/a/b.sock"), { target: "unix:///a/b.sock", isUnix: true });
    assert.deepEqual(grpcTarget("tcp://127.0.0.1:7878"), { target: "127.0.0.1:7878", isUnix: false });
    assert.deepEqual(grpcTarget("localhost:7878"), { target: "localhost:7878", isUnix: false });
  });
});

describe("scope", () => {
  test("an agent sees MEMORY.md, USER.md, memory/ and its extra paths, nothing beside them", () => {
    const ws = workspace("scope-a");
    const notes = join(tmp, "shared-notes");
    mkdirSync(notes, { recursive: true });
    const s = buildScope({ agentId: "a", workspaceDir: ws, extraPaths: [notes], rootScope: "workspace" });
    assert.deepEqual(s.roots, [ws, notes]);
    assert.deepEqual(pathPrefixes(s), [join(ws, "MEMORY.md"), join(ws, "USER.md"), `${join(ws, "memory")}/`, `${notes}/`]);
    assert.ok(inScope(s, join(ws, "MEMORY.md")));
    assert.ok(inScope(s, join(ws, "memory", "2026-01-01.md")));
    assert.ok(inScope(s, join(notes, "x.md")));
    assert.ok(!inScope(s, join(ws, "AGENTS.md")));
    assert.ok(!inScope(s, join(ws, "MEMORY.md.bak")));
    assert.ok(!inScope(s, `${join(ws, "memory")}-old/x.md`));
    assert.equal(displayPath(s, join(ws, "memory", "a.md")), "memory/a.md");
    assert.equal(displayPath(s, join(notes, "x.md")), join(notes, "x.md"));
    assert.deepEqual(buildScope({ agentId: "a", workspaceDir: ws, rootScope: "memory" }).roots, [join(ws, "memory")]);
    assert.deepEqual(buildScope({ agentId: "a", workspaceDir: ws, rootScope: "none" }).roots, []);
  });

  test("the prompt's memory section names the tools the agent has", () => {
    const both = buildMemoryPromptSection({ availableTools: new Set(["memory_search", "memory_get"]) });
    assert.equal(both[0], "## Memory Recall");
    assert.match(both.join("\n"), /run memory_search, then memory_get/);
    assert.match(buildMemoryPromptSection({ availableTools: new Set(["memory_get"]), citationsMode: "off" }).join("\n"), /Citations are off/);
    assert.deepEqual(buildMemoryPromptSection({ availableTools: new Set(["read"]) }), []);
  });

  test("citations follow memory.citations as memory-core does", () => {
    assert.equal(includeCitations("auto", "agent:main:main"), true);
    assert.equal(includeCitations("auto", "agent:main:slack:group:c1"), false);
    assert.equal(includeCitations("on", "agent:main:slack:channel:c1"), true);
    assert.equal(includeCitations("off", "agent:main:main"), false);
  });
});

describe("the tools match memory-core's contract", () => {
  // pytest passes OpenClaw's installed package; by hand: OPENCLAW_PACKAGE_DIR=.../node_modules/openclaw
  const pkg = process.env.OPENCLAW_PACKAGE_DIR;
  test("names and argument schemas are memory-core's", { skip: !pkg && "OPENCLAW_PACKAGE_DIR is not set" }, async () => {
    const dist = join(pkg as string, "dist");
    const file = readdirSync(dist).find((f) => /^memory-tool-contract-.*\.mjs$/.test(f));
    assert.ok(file, `no memory-tool-contract module in ${dist}`);
    const text = readFileSync(join(dist, file), "utf8");
    // The contract module imports OpenClaw internals; the schemas are plain object literals in it.
    const objectAfter = (name: string) => {
      const start = text.indexOf(`const ${name} = `);
      assert.ok(start >= 0, name);
      let depth = 0;
      let i = text.indexOf("{", start);
      const from = i;
      for (; i < text.length; i += 1) {
        if (text[i] === "{") depth += 1;
        else if (text[i] === "}" && --depth === 0) break;
      }
      return Function(`return (${text.slice(from, i + 1)});`)();
    };
    assert.deepEqual(objectAfter("MemorySearchSchema"), MEMORY_SEARCH_PARAMETERS);
    assert.deepEqual(objectAfter("MemoryGetSchema"), MEMORY_GET_PARAMETERS);
    assert.match(text, /name: "memory_search"/);
    assert.match(text, /name: "memory_get"/);
  });
});

describe("what goes on the wire", () => {
  const seen: { search: any[]; metadata: grpc.Metadata[]; deadlines: number[]; added: string[] } = { search: [], metadata: [], deadlines: [], added: [] };
  let server: grpc.Server;
  const sock = join(tmp, "fake.sock");
  const token = join(tmp, "token");
  let ws: string;

  before(async () => {
    ws = workspace("wire");
    writeFileSync(token, "s3cret\n");
    const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(findProto(), { keepCase: false, longs: Number, defaults: true, oneofs: true })) as any;
    server = new grpc.Server();
    server.addService(pkg.ragd.v1.Search.service, {
      Search(call: any, cb: any) {
        seen.search.push(call.request);
        seen.metadata.push(call.metadata);
        seen.deadlines.push(Number(call.getDeadline()) - Date.now());
        cb(null, {
          hits: [
            { chunkId: 1, path: join(ws, "memory", "a.md"), startLine: 3, endLine: 5, snippet: "alpha", score: 0.9, retrievalScore: 0.5, rerankScore: 0.9 },
            { chunkId: 2, path: join(tmp, "elsewhere", "b.md"), startLine: 1, endLine: 1, snippet: "beta", score: 0.8, retrievalScore: 0.4 },
            { chunkId: 3, path: join(ws, "MEMORY.md"), startLine: 1, endLine: 1, snippet: "gamma", score: 0.1, retrievalScore: 0.1 },
          ],
          candidates: 3, reranked: 2, models: { embedder: "e", reranker: "r" },
        });
      },
      SearchStream(call: any) { call.end(); },
      GetChunk(_call: any, cb: any) { cb({ code: grpc.status.NOT_FOUND, details: "no" }); },
      ReadFile(_call: any, cb: any) { cb({ code: grpc.status.NOT_FOUND, details: "path: not indexed" }); },
    });
    server.addService(pkg.ragd.v1.Index.service, {
      Status(_call: any, cb: any) { cb(null, { serving: true, filesIndexed: 2, chunks: 3, roots: [{ path: ws, filesIndexed: 2 }], models: { embedder: "e", reranker: "r" } }); },
      WatchStatus(call: any) { call.end(); },
      AddRoot(call: any, cb: any) { seen.added.push(call.request.path); cb(null, { path: call.request.path }); },
      RemoveRoot(_call: any, cb: any) { cb(null, {}); },
      ListRoots(_call: any, cb: any) { cb(null, { roots: [] }); },
      Reindex(_call: any, cb: any) { cb(null, {}); },
    });
    await new Promise<void>((res, rej) => server.bindAsync(`unix://${sock}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res())));
  });
  after(() => server.forceShutdown());

  test("every search carries a deadline, the agent's path prefixes and the token; hits are re-checked", async () => {
    const plugin = new RagdMemoryPlugin({ address: `unix://${sock}`, tokenFile: token, deadlineMs: 3000, minScore: 0.2 });
    try {
      const m = await plugin.manager({ agentId: "wire", workspaceDir: ws });
      const hits = await m.search("alpha", { maxResults: 2 });
      const req = seen.search.at(-1);
      assert.equal(req.deadlineMs, 3000);
      assert.equal(req.rerank, true);
      assert.deepEqual(req.filters.pathPrefixes, pathPrefixes(m.scope));
      assert.ok(seen.deadlines.at(-1)! > 3000 && seen.deadlines.at(-1)! <= 5000, `gRPC deadline ${seen.deadlines.at(-1)}`);
      assert.deepEqual(seen.metadata.at(-1)!.get("authorization"), ["Bearer s3cret"]);
      assert.deepEqual(seen.added, [ws]);
      // the hit outside the agent's files and the one under minScore are dropped
      assert.deepEqual(hits, [{
        path: "memory/a.md", startLine: 3, endLine: 5, score: 0.9, snippet: "alpha", source: "memory", citation: "memory/a.md#L3-L5",
      }]);
      const lexical = await m.search("alpha", { lexicalOnly: true });
      assert.ok(lexical.length >= 1);
      assert.equal(seen.search.at(-1).mode, "lexical");
      assert.equal(seen.search.at(-1).rerank, false);
      assert.deepEqual(await m.search("alpha", { sources: ["sessions"] }), []);
      const read = await m.readFile({ relPath: "memory/none.md" });
      assert.deepEqual(read, { status: "not_found", text: "", path: "memory/none.md" });
    } finally {
      plugin.close();
    }
  });
});

describe("no daemon", () => {
  test("the tools say the daemon is not running and name `ragd serve`; status shows it", async () => {
    const ws = workspace("down");
    const plugin = new RagdMemoryPlugin({ address: `unix://${join(tmp, "nothing-here.sock")}` },
      async () => ({ workspaceDir: ws, extraPaths: [] }));
    try {
      const m = await plugin.manager({ agentId: "down", workspaceDir: ws });
      const search = createMemorySearchTool({ manager: async () => m, citations: () => "auto" });
      const started = Date.now();
      const r = (await search.execute("t1", { query: "anything" })).details as any;
      assert.ok(Date.now() - started < 3000, "a missing daemon is reported at once");
      assert.equal(r.unavailable, true);
      assert.equal(r.disabled, true);
      assert.deepEqual(r.results, []);
      assert.match(r.error, /ragd daemon is not answering at unix:\/\/.*nothing-here\.sock/);
      assert.match(r.action, /ragd serve/);
      assert.match(r.warning, /not running/);
      const get = createMemoryGetTool({ manager: async () => m });
      const g = (await get.execute("t2", { path: "MEMORY.md" })).details as any;
      assert.equal(g.status, "error");
      assert.equal(g.code, "UNAVAILABLE");
      assert.match(g.error, /ragd serve/);
      assert.equal(await m.probeVectorAvailability(), false);
      const st = m.status();
      assert.equal(st.provider, "ragd");
      assert.equal(st.vector?.available, false);
      assert.match(st.lastSyncError ?? "", /ragd serve/);
      assert.equal((await m.probeEmbeddingAvailability()).ok, false);
      const rt = await plugin.runtime().getMemorySearchManager({ cfg: {}, agentId: "down", purpose: "status" });
      assert.equal(rt.manager, m);
      assert.equal(rt.manager.status().vector?.available, false);
      // after OpenClaw closes the managers (reload), the next call gets a fresh manager and channel
      await plugin.runtime().closeAllMemorySearchManagers();
      const again = await plugin.manager({ agentId: "down", workspaceDir: ws });
      assert.notEqual(again, m);
      assert.equal(await again.probeVectorAvailability(), false);
    } finally {
      plugin.close();
    }
  });
});
