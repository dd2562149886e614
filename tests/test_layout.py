"""The package's shape: stages import one way, each fact has one home, and the light entry points stay light."""
import ast
import re
import subprocess
import sys

import pytest
from conftest import REPO

from vae.config.docs import markdown_table
from vae.config.schema import ACTIVATIONS, MAY_CHANGE_ON_RESUME, NOT_COMPARED, ModelConfig, valid_keys
from vae.model.vae import ACTIVATION_MODULES

PACKAGE = REPO / "vae"
# The stages in the order data flows; a module may import its own stage and those before it.
STAGES = ("foundation", "data", "model", "run", "evaluate", "novelty", "train", "sweep", "compare", "api", "commands")
FOUNDATION = ("config", "errors", "files", "device", "denormals", "cli")


def stage(module: str) -> str:
    """'vae.train.loop' -> 'train'; 'vae.config.load' and 'vae.errors' -> 'foundation'; 'vae' -> 'api';
    'vae.__main__' -> 'commands'."""
    parts = module.split(".")[1:]
    if not parts or parts[0] == "api":
        return "api"
    if parts[0] == "__main__":
        return "commands"
    return "foundation" if parts[0] in FOUNDATION else parts[0]


def imports_of(path):
    """Every vae module a file imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "vae":  # from vae import files -> vae.files
            yield from (f"vae.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vae":
            yield node.module
            # from vae.train import fast_step -> vae.train.fast_step
            yield from (f"{node.module}.{a.name}" for a in node.names if a.name[0].islower())
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "vae")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("vae", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path


def test_every_module_lives_in_a_stage_folder_or_is_a_foundation():
    for name, _ in modules():
        assert stage(name) in STAGES, name


def test_no_stage_imports_a_later_one():
    upward = [f"{name} imports {target}" for name, path in modules() for target in imports_of(path)
              if STAGES.index(stage(target)) > STAGES.index(stage(name))]
    assert upward == []


def test_no_module_imports_itself_through_others():
    """The import graph has no cycle (so, among them, the training steps: the interface, autograd's steps, the
    written-out one and the function that picks one import one way)."""
    graph = {name: {t for t in imports_of(path) if t != name} for name, path in modules()}

    def reached(start):
        seen, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen
    assert [name for name in graph if name in reached(name)] == []
    steps = ("vae.train.autograd_step", "vae.train.fast_step", "vae.train.choose_step")
    assert not set(steps) & reached("vae.train.step")
    assert {"vae.train.autograd_step", "vae.train.fast_step"} <= graph["vae.train.choose_step"]


def test_the_import_check_sees_imports_inside_functions_too():
    assert "vae.train.loop" in set(imports_of(PACKAGE / "sweep" / "trial.py"))  # train_trial's, made on first use
    assert stage("vae.train.loop") == "train" and stage("vae.config.load") == "foundation" and stage("vae") == "api"


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_loading_a_model_imports_neither_matplotlib_nor_the_training_loop(evaluated):
    run = evaluated[4][0]
    loaded = run_python(f"import sys, vae; m = vae.load({str(run)!r}, device='cpu'); m.sample(2); m.nll(m.sample(1), "
                        f"k=2); print(sorted(k for k in sys.modules if k.startswith(('matplotlib', 'vae.train', "
                        f"'optuna'))))")
    assert loaded == "[]"


def test_the_sweep_spec_imports_neither_optuna_nor_torch():
    loaded = run_python("import sys, vae.sweep.spec; print(sorted(k for k in ('torch', 'optuna') if k in sys.modules))")
    assert loaded == "[]"


def test_docs_config_md_is_generated_from_the_keys_declarations():
    assert (REPO / "docs" / "config.md").read_text() == markdown_table(), \
        "docs/config.md is stale: python -m vae.config.docs > docs/config.md"
    table = markdown_table()
    assert all(f"| `{key}` |" in table for key in valid_keys())


def test_the_key_lists_follow_the_roles_declared_on_the_fields():
    # A comparison leaves out only keys that may change on resume; the model's shape may not change.
    assert set(NOT_COMPARED) < set(MAY_CHANGE_ON_RESUME)
    assert "train.epochs" in MAY_CHANGE_ON_RESUME and "train.epochs" not in NOT_COMPARED
    assert not any(k.startswith(("model.", "loss.")) for k in MAY_CHANGE_ON_RESUME)
    assert {"output.dir", "data.root", "train.device", "eval.iwae_samples"} <= set(NOT_COMPARED)


def test_every_activation_the_config_takes_is_built_by_the_model_and_the_page():
    assert set(ACTIVATION_MODULES) == set(ACTIVATIONS)
    for name in ACTIVATIONS:
        ModelConfig(activation=name)  # accepted
    page = (PACKAGE / "evaluate" / "explorer.js").read_text()
    block = re.search(r"const ACTIVATIONS = \{(.*?)\};", page, re.S).group(1)
    assert set(re.findall(r"^\s*(\w+):", block, re.M)) == set(ACTIVATIONS)


@pytest.mark.parametrize("literal", [r'"checkpoints"\s*/\s*"last\.pt"', r'"checkpoints"\s*/\s*"best\.pt"'])
def test_a_run_directorys_checkpoint_paths_are_spelled_in_one_place(literal):
    spelled = [str(path.relative_to(REPO)) for path in [*PACKAGE.rglob("*.py"), *REPO.glob("*.py")]
               if re.search(literal, path.read_text())]
    assert spelled == []
