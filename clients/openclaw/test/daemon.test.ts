// The plugin against a real `ragd serve` (tests/test_openclaw.py starts one with tiny models and
// passes RAGD_TEST_ADDRESS): roots are added, hits carry their lines, agents stay apart.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { RagdMemoryManager } from "../src/manager.ts";
import { RagdMemoryPlugin } from "../src/plugin.ts";
import { createMemoryGetTool, createMemorySearchTool } from "../src/tools.ts";

const address = process.env.RAGD_TEST_ADDRESS;
const skip = !address && (process.env.CI ? false : "RAGD_TEST_ADDRESS is not set (tests/test_openclaw.py sets it)");

const tmp = realpathSync(mkdtempSync(join(tmpdir(), "ragd-openclaw-daemon-")));
const wsAlice = join(tmp, "workspace-alice");
const wsBob = join(tmp, "workspace-bob");
const shared = join(tmp, "alice-extra");

function write(path: string, text: string): void {
  mkdirSync(join(path, ".."), { recursive: true });
  writeFileSync(path, text);
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 90_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
}

describe("against a running ragd", { skip }, () => {
  let plugin: RagdMemoryPlugin;
  let alice: RagdMemoryManager;
  let bob: RagdMemoryManager;
  const longLines = Array.from({ length: 130 }, (_, i) => `line ${i + 1} of the xylophone inventory`);

  before(async () => {
    assert.ok(address, "RAGD_TEST_ADDRESS must name the daemon under CI");
    write(join(wsAlice, "MEMORY.md"), "# Alice\n\nAlice keeps bees on the roof.\nThe quince jam recipe uses cardamom.\n");
    write(join(wsAlice, "memory", "2026-03-12.md"), "# Trip\n\nWe hiked the Sólheimajökull glacier with crampons.\nThe guide was called Ragnheidur.\n");
    write(join(wsAlice, "memory", "inventory.md"), `${longLines.join("\n")}\n`);
    write(join(wsAlice, "AGENTS.md"), "# Agents\n\nThe quince jam instructions for agents live here too.\n");
    write(join(shared, "recipes.md"), "# Recipes\n\nPumpernickel needs rye and a long bake.\n");
    write(join(wsBob, "MEMORY.md"), "# Bob\n\nBob collects vinyl records of jazz trumpet.\n");
    const agents: Record<string, { workspaceDir: string; extraPaths: string[] }> = {
      alice: { workspaceDir: wsAlice, extraPaths: [shared] },
      bob: { workspaceDir: wsBob, extraPaths: [] },
    };
    plugin = new RagdMemoryPlugin({ address, deadlineMs: 4000 }, async (_cfg, id) => agents[id]);
    alice = await plugin.manager({ cfg: {}, agentId: "alice" });
    bob = await plugin.manager({ cfg: {}, agentId: "bob" });
    await alice.sync({ reason: "test" });
    await bob.sync({ reason: "test" });
    // indexing runs in the background: wait for each agent's distinctive words
    await until("alice's files", async () => ((await alice.search("Ragnheidur glacier crampons")).some((h) => h.path === "memory/2026-03-12.md") ? true : undefined));
    await until("alice's extra path", async () => ((await alice.search("Pumpernickel rye")).some((h) => h.path.endsWith("recipes.md")) ? true : undefined));
    await until("bob's files", async () => ((await bob.search("vinyl jazz trumpet")).some((h) => h.path === "MEMORY.md") ? true : undefined));
  });

  after(() => {
    plugin?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  test("hits carry workspace-relative paths, line spans, scores, snippets and citations", async () => {
    const hits = await alice.search("Ragnheidur glacier crampons");
    const hit = hits.find((h) => h.path === "memory/2026-03-12.md");
    assert.ok(hit, JSON.stringify(hits));
    const lines = readFileSync(join(wsAlice, hit.path), "utf8").split("\n");
    assert.ok(hit.startLine >= 1 && hit.endLine >= hit.startLine && hit.endLine <= lines.length);
    assert.ok(lines.slice(hit.startLine - 1, hit.endLine).join("\n").includes("Ragnheidur"));
    assert.equal(hit.source, "memory");
    assert.equal(hit.citation, `memory/2026-03-12.md#L${hit.startLine}-L${hit.endLine}`);
    assert.ok(hit.snippet.includes("Ragnheidur"));
    assert.equal(typeof hit.score, "number");
    const extra = (await alice.search("Pumpernickel rye")).find((h) => h.path.endsWith("recipes.md"));
    assert.equal(extra?.path, join(shared, "recipes.md"));  // outside the workspace: absolute
  });

  test("one agent never sees another agent's files", async () => {
    for (const q of ["Ragnheidur glacier crampons", "quince jam cardamom bees", "Pumpernickel rye", "xylophone inventory"]) {
      const hits = await bob.search(q, { maxResults: 50 });
      assert.ok(hits.every((h) => h.path === "MEMORY.md"), `${q}: ${JSON.stringify(hits)}`);
    }
    const aliceHits = await alice.search("vinyl jazz trumpet", { maxResults: 50 });
    assert.ok(aliceHits.every((h) => !h.path.includes("workspace-bob")), JSON.stringify(aliceHits));
    // bob cannot read alice's file either, by relative or absolute path
    await assert.rejects(bob.readFile({ relPath: join(wsAlice, "MEMORY.md") }), /not one of this agent's memory files/);
    await assert.rejects(bob.readFile({ relPath: "../workspace-alice/MEMORY.md" }), /not one of this agent's memory files/);
  });

  test("files in the workspace beside the memory files are not memory", async () => {
    const hits = await alice.search("quince jam instructions for agents", { maxResults: 50 });
    assert.ok(hits.some((h) => h.path === "MEMORY.md"), JSON.stringify(hits));
    assert.ok(hits.every((h) => h.path !== "AGENTS.md"), JSON.stringify(hits));
  });

  test("memory_search and memory_get answer in memory-core's shapes", async () => {
    const search = createMemorySearchTool({ manager: async () => alice, citations: () => "on", sessionKey: "agent:alice:main" });
    const r = (await search.execute("c1", { query: "Ragnheidur glacier", maxResults: 3 })).details as any;
    assert.equal(r.provider, "ragd");
    assert.ok(r.results.length >= 1 && r.results.length <= 3);
    const top = r.results.find((x: any) => x.path === "memory/2026-03-12.md");
    assert.ok(top, JSON.stringify(r.results));
    assert.equal(top.corpus, "memory");
    assert.match(top.snippet, /Source: memory\/2026-03-12\.md#L\d+-L\d+$/);
    assert.equal(r.debug.deadlineMs, 4000);
    assert.ok(r.debug.reranked >= 0 && r.debug.candidates >= 1);

    const get = createMemoryGetTool({ manager: async () => alice });
    const g = (await get.execute("c2", { path: "memory/2026-03-12.md", from: 3, lines: 2 })).details as any;
    assert.deepEqual(g, {
      status: "ok", path: "memory/2026-03-12.md", from: 3, lines: 2,
      text: "We hiked the Sólheimajökull glacier with crampons.\nThe guide was called Ragnheidur.",
    });
    const long = (await get.execute("c3", { path: "memory/inventory.md" })).details as any;
    assert.equal(long.lines, 120);
    assert.equal(long.truncated, true);
    assert.equal(long.nextFrom, 121);
    assert.ok(long.text.startsWith("line 1 of the xylophone inventory\n"));
    const rest = (await get.execute("c4", { path: "memory/inventory.md", from: 121 })).details as any;
    assert.equal(rest.lines, 10);
    assert.equal(rest.truncated, undefined);
    const missing = (await get.execute("c5", { path: "memory/nope.md" })).details as any;
    assert.equal(missing.status, "not_found");
    const outside = (await get.execute("c6", { path: "AGENTS.md" })).details as any;
    assert.equal(outside.status, "error");
    assert.equal(outside.code, "MEMORY_PATH_NOT_ALLOWED");
  });

  test("status and the availability probes report the daemon", async () => {
    assert.equal(await alice.probeVectorAvailability(), true);
    const st = alice.status();
    assert.equal(st.provider, "ragd");
    assert.equal(st.vector?.available, true);
    assert.ok((st.files ?? 0) >= 3, JSON.stringify(st));
    assert.ok((st.chunks ?? 0) >= 3);
    assert.equal(st.workspaceDir, wsAlice);
    assert.deepEqual(alice.getCachedEmbeddingAvailability()?.ok, true);
    assert.equal((await plugin.runtime().getMemorySearchManager({ cfg: {}, agentId: "alice", purpose: "status" })).manager, alice);
  });

  test("reranking off and lexical-only searches", async () => {
    const off = new RagdMemoryPlugin({ address, rerank: false }, async () => ({ workspaceDir: wsAlice, extraPaths: [] }));
    try {
      const m = await off.manager({ cfg: {}, agentId: "alice" });
      const hits = await m.search("Ragnheidur glacier");
      assert.ok(hits.some((h) => h.path === "memory/2026-03-12.md"));
      assert.equal(m.lastSearch()?.reranked, 0);
      const lexical = await m.search("Ragnheidur", { lexicalOnly: true });
      assert.equal(lexical[0]?.path, "memory/2026-03-12.md");
    } finally {
      off.close();
    }
  });
});
