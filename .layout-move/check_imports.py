"""Static check: every project import in every tracked .py file names a module (and names) that exist."""
import ast
import subprocess
import sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
PK = ("stream", "agents", "rules")
def path_of(mod):
    p = repo.joinpath(*mod.split("."))
    if (p / "__init__.py").exists(): return p / "__init__.py"
    if p.with_suffix(".py").exists(): return p.with_suffix(".py")
    return None
def names(path):
    tree = ast.parse(path.read_text()); out = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.add(n.name)
        elif isinstance(n, ast.Assign):
            out |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name): out.add(n.target.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out
bad = 0
for rel in subprocess.run(["git", "-C", str(repo), "ls-files", "*.py"], capture_output=True, text=True).stdout.split():
    tree = ast.parse((repo / rel).read_text())
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] in PK and not path_of(a.name): print(f"{rel}:{n.lineno}: no module {a.name}"); bad += 1
        elif isinstance(n, ast.ImportFrom) and not n.level and n.module and n.module.split(".")[0] in PK:
            p = path_of(n.module)
            if not p: print(f"{rel}:{n.lineno}: no module {n.module}"); bad += 1; continue
            have = names(p)
            for a in n.names:
                if a.name not in have and not path_of(f"{n.module}.{a.name}"):
                    print(f"{rel}:{n.lineno}: {n.module} has no {a.name}"); bad += 1
    for n in ast.walk(tree):  # dotted string targets: monkeypatch/mock/importorskip/logger
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.split(".")[0] in PK and "." in n.value and " " not in n.value and "/" not in n.value:
            parts = n.value.split(":")[0].split(".")
            ok = any(path_of(".".join(parts[:k])) for k in range(len(parts), 1, -1))
            if not ok: print(f"{rel}:{n.lineno}: string {n.value!r} names no module"); bad += 1
print("problems:", bad)
