// The OpenClaw plugin entry: ragd as the memory engine (plugins.slots.memory = "ragd").
import type { MemoryPluginCapability } from "openclaw/plugin-sdk/memory-host-core";
import { definePluginEntry } from "openclaw/plugin-sdk/plugin-entry";
import { RagdMemoryPlugin } from "./src/plugin.ts";
import { buildMemoryPromptSection, type CitationsMode, createMemoryGetTool, createMemorySearchTool } from "./src/tools.ts";

type ToolContext = {
  config?: unknown;
  runtimeConfig?: unknown;
  getRuntimeConfig?: () => unknown;
  workspaceDir?: string;
  agentId?: string;
  sessionKey?: string;
};

function citationsMode(cfg: unknown): CitationsMode {
  const mode = (cfg as { memory?: { citations?: unknown } } | undefined)?.memory?.citations;
  return mode === "on" || mode === "off" ? mode : "auto";
}

export default definePluginEntry({
  id: "ragd",
  name: "ragd memory",
  description: "Memory search served by a local ragd daemon (hybrid retrieval, cross-encoder reranking, deadlines)",
  kind: "memory",
  register(api) {
    // api.rootDir is where the plugin was installed from (OpenClaw runs a captured copy of this file).
    const plugin = new RagdMemoryPlugin(api.pluginConfig ?? {}, undefined, api.rootDir);
    // Typed against OpenClaw's own declarations: tsc (run by tests/test_openclaw.py) checks the contract.
    const capability: MemoryPluginCapability = {
      deterministicRecallToolName: "memory_search",
      promptBuilder: buildMemoryPromptSection,
      runtime: plugin.runtime(),
    };
    api.registerMemoryCapability(capability);
    const currentConfig = (ctx: ToolContext) => ctx.getRuntimeConfig?.() ?? ctx.runtimeConfig ?? ctx.config ?? api.config;
    const managerFor = (ctx: ToolContext) => () =>
      plugin.manager({ cfg: currentConfig(ctx), agentId: ctx.agentId, workspaceDir: ctx.workspaceDir });
    api.registerTool((ctx: ToolContext) => createMemorySearchTool({
      manager: managerFor(ctx),
      citations: () => citationsMode(currentConfig(ctx)),
      sessionKey: ctx.sessionKey,
    }), { names: ["memory_search"] });
    api.registerTool((ctx: ToolContext) => createMemoryGetTool({ manager: managerFor(ctx) }), { names: ["memory_get"] });
    api.logger?.info?.(`ragd memory: daemon ${plugin.config.address}, deadline ${plugin.config.deadlineMs} ms, rerank ${plugin.config.rerank ? "on" : "off"}`);
  },
});
