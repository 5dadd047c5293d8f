"""The `hfmem web` page as a Hugging Face Space (Gradio SDK, ``app_file: app.py``): the same app, served where the
Space says (Spaces set GRADIO_SERVER_NAME and the port). Locally, run ``hfmem web`` instead. See docs/web.md."""

from hfmem.environment import check_environment, prepare_cli_environment

prepare_cli_environment()  # what hfmem sets before huggingface_hub is imported, as the CLI does
check_environment()

from hfmem.web import build_app, launch_options  # noqa: E402  (after the environment is prepared)

demo = build_app()

if __name__ == "__main__":
    demo.launch(**launch_options())
