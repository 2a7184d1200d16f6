// Check the page's ES modules without a browser: each parses, every name it uses is declared,
// imported or a browser global, and each relative import names an export of its module.
// Usage: node check.mjs FILE.js...; prints one "file:line:column: problem" per problem,
// exits 1 when there is any.

import { readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import * as acorn from "acorn";
import { analyze } from "eslint-scope";
import globals from "globals";

const KNOWN = new Set([...Object.keys(globals.builtin), ...Object.keys(globals.browser)]);

function parse(file) {
  return acorn.parse(readFileSync(file, "utf8"), { ecmaVersion: "latest", sourceType: "module", locations: true, ranges: true });
}

// The names a module exports ("default" for its default export).
function exportsOf(ast) {
  const names = new Set();
  for (const node of ast.body) {
    if (node.type === "ExportDefaultDeclaration") names.add("default");
    if (node.type !== "ExportNamedDeclaration") continue;
    const declaration = node.declaration;
    if (declaration && declaration.type === "VariableDeclaration") {
      for (const declarator of declaration.declarations) if (declarator.id.type === "Identifier") names.add(declarator.id.name);
    } else if (declaration && declaration.id) names.add(declaration.id.name);
    for (const specifier of node.specifiers) names.add(specifier.exported.name);
  }
  return names;
}

const problems = [];
const trees = new Map();
for (const file of process.argv.slice(2)) {
  const path = resolve(file);
  try {
    trees.set(path, parse(path));
  } catch (error) {
    const where = error.loc ? `${error.loc.line}:${error.loc.column + 1}` : "1:1";
    problems.push(`${basename(path)}:${where}: syntax error: ${error.message}`);
  }
}
for (const [path, ast] of trees) {
  const at = (node) => `${basename(path)}:${node.loc.start.line}:${node.loc.start.column + 1}`;
  const scopes = analyze(ast, { ecmaVersion: 2022, sourceType: "module" });
  for (const reference of scopes.globalScope.through) {
    const name = reference.identifier.name;
    if (!KNOWN.has(name)) problems.push(`${at(reference.identifier)}: '${name}' is not defined`);
  }
  for (const node of ast.body) {
    if (node.type !== "ImportDeclaration" || !node.source.value.startsWith(".")) continue;
    const target = resolve(dirname(path), node.source.value);
    let exported;
    try {
      exported = exportsOf(trees.get(target) || parse(target));
    } catch {
      problems.push(`${at(node.source)}: cannot read the imported module ${node.source.value}`);
      continue;
    }
    for (const specifier of node.specifiers) {
      if (specifier.type !== "ImportSpecifier") continue;
      const name = specifier.imported.name;
      if (!exported.has(name)) problems.push(`${at(specifier)}: ${node.source.value} does not export '${name}'`);
    }
  }
}
for (const problem of problems) console.log(problem);
process.exit(problems.length ? 1 : 0);
