// Parses WWW-Authenticate headers (RFC 9110 challenges: quoted strings, commas, several schemes).

/** One challenge: the scheme in lowercase and its parameters with lowercase names. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const TOKEN = /[!#$%&'*+\-.^_`|~0-9A-Za-z]+/y;
/** An unquoted value: lenient, up to the next comma or space (some servers leave URLs unquoted). */
const BARE_VALUE = /[^\s,]*/y;

/** All challenges in a WWW-Authenticate value (several headers arrive joined with ", "). */
export function parseChallenges(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  let i = 0;
  const skip = (chars: string) => {
    while (i < header.length && chars.includes(header[i])) i++;
  };
  const read = (re: RegExp): string | undefined => {
    re.lastIndex = i;
    const m = re.exec(header);
    if (!m) return undefined;
    i = re.lastIndex;
    return m[0];
  };
  while (i < header.length) {
    skip(" \t,");
    const scheme = read(TOKEN);
    if (scheme === undefined) {
      i++;
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    for (;;) {
      const start = i;
      skip(" \t,");
      const name = read(TOKEN);
      skip(" \t");
      if (name === undefined || header[i] !== "=") {
        i = start; // not a parameter: the next challenge's scheme, or the end
        break;
      }
      i++;
      skip(" \t");
      const value = header[i] === '"' ? readQuoted() : read(BARE_VALUE) ?? "";
      challenge.params[name.toLowerCase()] = value;
    }
  }
  return challenges;

  function readQuoted(): string {
    let value = "";
    for (i++; i < header.length && header[i] !== '"'; i++) {
      if (header[i] === "\\" && i + 1 < header.length) i++;
      value += header[i];
    }
    i++;
    return value;
  }
}
