"""``%pipeline``: run, check and inspect notebook pipelines from a notebook, with a live view."""

from __future__ import annotations

from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from ..exceptions import JMKUsageError
from ..util.pairs import parse_pairs
from ..widgets.pipelines import format_run, run_html
from .common import service_for, split_words, user_errors

USAGE = ("%pipeline run PIPELINE.yaml [-p NAME=VALUE ...] [--resume RUN_ID] [--explain] | "
         "%pipeline validate PIPELINE.yaml [-p ...] [--cron EXPR] | %pipeline show RUN_ID | %pipeline list")


@magics_class
class PipelineMagics(Magics):
    """``%pipeline run|validate|show|list``."""

    @line_magic
    @user_errors
    def pipeline(self, line: str) -> Any:
        """Run a notebook pipeline (pipeline.yaml) here, with a live table of its steps.

        Examples
        --------
        ::

            %pipeline run notebooks/pipeline/pipeline.yaml -p c=0.5
            %pipeline run notebooks/pipeline/pipeline.yaml --resume 1a2b3c4d
            %pipeline validate notebooks/pipeline/pipeline.yaml --cron "0 3 * * *"
            %pipeline show 1a2b3c4d
            %pipeline list

        Returns the run (``.steps[name].outputs`` holds what each step published).
        """
        words = split_words(line)
        if not words or words[0] not in ("run", "validate", "show", "list"):
            raise JMKUsageError(f"Usage: {USAGE}")
        command, rest = words[0], words[1:]
        options: dict[str, Any] = {"-p": [], "--resume": None, "--cron": None, "--explain": False}
        positional = []
        while rest:
            word = rest.pop(0)
            if word == "--explain":
                options[word] = True
            elif word in ("-p", "--resume", "--cron"):
                if not rest:
                    raise JMKUsageError(f"{word} needs a value. Usage: {USAGE}")
                value = rest.pop(0)
                options[word] = [*options[word], value] if word == "-p" else value
            elif word.startswith("-"):
                raise JMKUsageError(f"Unknown option {word}. Usage: {USAGE}")
            else:
                positional.append(word)
        engine = self._engine()
        if command == "list":
            for run in engine.list()[:20]:
                print(f"{run.run_id}  {run.pipeline:<20} {run.state}")
            return None
        if len(positional) != 1:
            raise JMKUsageError(f"%pipeline {command} takes one {'RUN_ID' if command == 'show' else 'PIPELINE.yaml'}.")
        if command == "show":
            print(format_run(engine.load(positional[0]), explain=True))
            return None
        from ..pipelines.spec import load_pipeline, validate

        pipeline = load_pipeline(positional[0], parse_pairs(options["-p"], "-p"))
        if command == "validate":
            validate(pipeline, cron=options["--cron"])
            print(f"pipeline {pipeline.name}: {len(pipeline.steps)} steps, valid")
            return None
        return self._run(engine, pipeline, options["--resume"], options["--explain"])

    def _engine(self) -> Any:
        from ..pipelines.engine import PipelineEngine

        assert self.shell is not None
        return PipelineEngine(service=service_for(self.shell))

    def _run(self, engine: Any, pipeline: Any, resume: str | None, explain: bool) -> Any:
        import ipywidgets
        from IPython.display import display


        view = ipywidgets.HTML()
        display(view)

        def update(run: Any, step: Any) -> None:
            view.value = run_html(run)

        run = engine.run(pipeline, resume=resume, on_event=update)
        view.value = run_html(run)
        print(format_run(run, explain=explain))
        return run
