// What one agent may search and read: its workspace's memory files (MEMORY.md, USER.md, memory/),
// its memory.search.extraPaths and the plugin's `paths`; and which folders become ragd roots for it.
import { existsSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import type { RootScope } from "./config.ts";

export const MEMORY_FILES = ["MEMORY.md", "USER.md"];
export const MEMORY_DIR = "memory";

export type AgentScope = {
  agentId: string;
  workspaceDir: string;
  /** Files the agent may see, matched exactly. */
  files: string[];
  /** Folders the agent may see (everything under them). */
  dirs: string[];
  /** Folders to register with ragd (AddRoot); each must exist when added. */
  roots: string[];
  extraPaths: string[];
};

/** A path with its symlinks resolved where it exists (ragd stores the paths it walks). */
function real(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    const parent = dirname(p);
    return parent === p ? p : join(real(parent), basename(p));
  }
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** A memory.search.extraPaths entry is a path string or {path, pattern}; patterns are not applied here. */
export function extraPathStrings(entries: unknown): string[] {
  if (!Array.isArray(entries)) return [];
  return entries.flatMap((e) => (typeof e === "string" ? [e] : e && typeof e === "object" && typeof (e as { path?: unknown }).path === "string" ? [(e as { path: string }).path] : []));
}

export function buildScope(params: {
  agentId: string;
  workspaceDir: string;
  extraPaths?: string[];
  paths?: string[];
  rootScope: RootScope;
}): AgentScope {
  const ws = real(resolve(params.workspaceDir));
  const files = MEMORY_FILES.map((f) => join(ws, f));
  const dirs = [join(ws, MEMORY_DIR)];
  const roots: string[] = [];
  if (params.rootScope === "workspace") roots.push(ws);
  else if (params.rootScope === "memory") roots.push(join(ws, MEMORY_DIR));
  const extra = [...(params.extraPaths ?? []), ...(params.paths ?? [])];
  for (const entry of extra) {
    const abs = real(isAbsolute(entry) ? entry : resolve(ws, entry.replace(/^~(?=\/|$)/, process.env.HOME ?? "~")));
    // A missing extra path is taken for a folder still to come, as memory-core does.
    if (existsSync(abs) && !isDir(abs)) {
      files.push(abs);
      if (params.rootScope !== "none") roots.push(dirname(abs));
    } else {
      dirs.push(abs);
      if (params.rootScope !== "none") roots.push(abs);
    }
  }
  return {
    agentId: params.agentId,
    workspaceDir: ws,
    files: [...new Set(files)],
    dirs: [...new Set(dirs)],
    roots: [...new Set(roots)],
    extraPaths: extra,
  };
}

/** The path prefixes ragd filters a search by: exact files and folders ending in "/". */
export function pathPrefixes(scope: AgentScope): string[] {
  return [...scope.files, ...scope.dirs.map((d) => (d.endsWith("/") ? d : `${d}/`))];
}

/** Whether an absolute path is one the agent may see (checked again on every hit and read). */
export function inScope(scope: AgentScope, absPath: string): boolean {
  return scope.files.includes(absPath) || scope.dirs.some((d) => absPath.startsWith(d.endsWith("/") ? d : `${d}/`));
}

/** The path OpenClaw shows: relative to the workspace when inside it, else absolute. */
export function displayPath(scope: AgentScope, absPath: string): string {
  const rel = relative(scope.workspaceDir, absPath);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel.split(sep).join("/") : absPath;
}

/** A memory_get path (relative to the workspace, or absolute) as an absolute path. */
export function absolutePath(scope: AgentScope, path: string): string {
  const p = path.trim();
  return real(isAbsolute(p) ? resolve(p) : resolve(scope.workspaceDir, p));
}
