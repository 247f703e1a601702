// A unified diff (GetEvent's yaml_diff) as the rows of a side-by-side view. Pure.

/**
 * Rows {kind, left, right, leftNumber, rightNumber}: kind "context" (both sides), "change" (a removed line beside
 * an added one), "removed", "added" or "gap" (lines the diff leaves out between hunks).
 */
export function sideBySide(unified) {
  const rows = [];
  let left = 0;
  let right = 0;
  let removed = [];
  let added = [];
  const flush = () => {
    const length = Math.max(removed.length, added.length);
    for (let index = 0; index < length; index++) {
      const old = removed[index];
      const now = added[index];
      rows.push({
        kind: old && now ? "change" : old ? "removed" : "added",
        left: old?.text ?? "", leftNumber: old?.number ?? "", right: now?.text ?? "", rightNumber: now?.number ?? "",
      });
    }
    removed = [];
    added = [];
  };
  let inHunk = false;
  for (const line of unified.split("\n")) {
    // Only the file header comes before the first hunk: inside one, "---x" is the removed line "--x".
    if (!inHunk && (line.startsWith("---") || line.startsWith("+++"))) continue;
    if (line === "") continue;
    const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(line);
    if (hunk) {
      flush();
      inHunk = true;
      if (rows.length || Number(hunk[1]) > 1) rows.push({ kind: "gap", left: "", right: "", leftNumber: "",
        rightNumber: "" });
      left = Number(hunk[1]);
      right = Number(hunk[2]);
      continue;
    }
    const text = line.slice(1);
    if (line[0] === "-") removed.push({ text, number: left++ });
    else if (line[0] === "+") added.push({ text, number: right++ });
    else if (line[0] === " ") {
      flush();
      rows.push({ kind: "context", left: text, right: text, leftNumber: left++, rightNumber: right++ });
    }
  }
  flush();
  return rows;
}
