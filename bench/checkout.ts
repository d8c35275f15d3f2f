// Extracts a committed revision of registry-mirror (git archive) so that it can be measured while
// the working tree is being edited.

import { run } from "./proc.ts";

/**
 * Writes the files of `rev` (e.g. "HEAD", a commit) of the repository at `repo` into `into` and
 * returns its short commit id.
 */
export async function checkoutRevision(repo: string, rev: string, into: string): Promise<string> {
  const commit = await run("git", [
    "-C",
    repo,
    "rev-parse",
    "--short",
    "--verify",
    `${rev}^{commit}`,
  ]);
  if (commit.code !== 0) {
    throw new Error(`--mirror-rev: unknown revision "${rev}": ${commit.stderr}`);
  }
  await Deno.mkdir(into, { recursive: true });
  const archive = new Deno.Command("bash", {
    args: ["-c", 'git -C "$1" archive "$2" | tar -x -C "$3"', "bash", repo, rev, into],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  });
  const result = await archive.output();
  if (result.code !== 0) {
    throw new Error(`git archive ${rev}: ${new TextDecoder().decode(result.stderr)}`);
  }
  return commit.stdout.trim();
}
