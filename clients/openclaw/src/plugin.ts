// One ragd connection for the plugin, one memory manager per agent, and the runtime OpenClaw
// asks for managers (MemoryPluginRuntime in openclaw/plugin-sdk).
import { findProto, RagdClient } from "./client.ts";
import { type RagdPluginConfig, resolveConfig } from "./config.ts";
import { RagdMemoryManager, RootRegistrar } from "./manager.ts";
import { buildScope, extraPathStrings } from "./scope.ts";

/** Where an agent's workspace is and which extra memory paths it has, as OpenClaw resolves them. */
export type AgentResolver = (cfg: unknown, agentId: string) => Promise<{ workspaceDir: string; extraPaths: string[] }>;

/** OpenClaw's own resolution (loaded on first use: the SDK module is large and OpenClaw has it loaded already). */
export const openclawAgentResolver: AgentResolver = async (cfg, agentId) => {
  const sdk = await import("openclaw/plugin-sdk/memory-core-host-engine-foundation");
  const workspaceDir = sdk.resolveAgentWorkspaceDir(cfg as never, agentId);
  const memory = sdk.resolveMemorySearchConfig(cfg as never, agentId);
  return { workspaceDir, extraPaths: extraPathStrings(memory?.extraPaths) };
};

export class RagdMemoryPlugin {
  readonly config: RagdPluginConfig;
  private connection: { client: RagdClient; registrar: RootRegistrar } | undefined;
  private readonly managers = new Map<string, RagdMemoryManager>();
  private readonly resolveAgent: AgentResolver;
  private readonly protoPath: string;

  /** `rootDir`: the folder OpenClaw installed the plugin from (api.rootDir), where the proto is found. */
  constructor(rawConfig: unknown, resolveAgent: AgentResolver = openclawAgentResolver, rootDir?: string) {
    this.resolveAgent = resolveAgent;
    this.config = resolveConfig(rawConfig);
    this.protoPath = findProto(rootDir);
  }

  /** The daemon connection, opened on first use and again after close(). */
  private connect(): { client: RagdClient; registrar: RootRegistrar } {
    if (!this.connection) {
      const client = new RagdClient(this.config.address, { tokenFile: this.config.tokenFile, protoPath: this.protoPath });
      this.connection = { client, registrar: new RootRegistrar(client) };
    }
    return this.connection;
  }

  /** The agent's manager; `workspaceDir` from the tool context wins over the config's. */
  async manager(params: { cfg?: unknown; agentId?: string; workspaceDir?: string }): Promise<RagdMemoryManager> {
    const agentId = params.agentId || "main";
    const resolved = params.cfg !== undefined || !params.workspaceDir
      ? await this.resolveAgent(params.cfg ?? {}, agentId)
      : { workspaceDir: params.workspaceDir, extraPaths: [] };
    const workspaceDir = params.workspaceDir || resolved.workspaceDir;
    const key = `${agentId}\u0000${workspaceDir}\u0000${resolved.extraPaths.join("\u0000")}`;
    let manager = this.managers.get(key);
    if (!manager) {
      const scope = buildScope({
        agentId, workspaceDir, extraPaths: resolved.extraPaths, paths: this.config.paths, rootScope: this.config.rootScope,
      });
      const { client, registrar } = this.connect();
      manager = new RagdMemoryManager(client, scope, this.config, registrar);
      this.managers.set(key, manager);
    }
    return manager;
  }

  /** MemoryPluginRuntime: what OpenClaw's status, CLI and memory hooks call. */
  runtime() {
    return {
      getMemorySearchManager: async (params: { cfg: unknown; agentId: string; purpose?: string }) => {
        try {
          const manager = await this.manager({ cfg: params.cfg, agentId: params.agentId });
          if (params.purpose === "status") await manager.probe();
          return { manager, debug: { backend: "builtin" as const, purpose: params.purpose as never } };
        } catch (err) {
          return { manager: null, error: (err as Error).message };
        }
      },
      resolveMemoryBackendConfig: () => ({ backend: "builtin" as const }),
      closeMemorySearchManager: async (params: { agentId: string }) => {
        for (const [key, m] of this.managers) if (m.scope.agentId === params.agentId) this.managers.delete(key);
      },
      // OpenClaw calls this on reload and shutdown: drop the managers and the channel.
      closeAllMemorySearchManagers: async () => this.close(),
    };
  }

  close(): void {
    this.managers.clear();
    this.connection?.client.close();
    this.connection = undefined;
  }
}
