"""A stock Gradio app for the frpc-path tests: ``share=True`` and no sharetunnel code.

Run as ``python -m tests.gradio.frpc_app PORT``; it blocks in ``launch()`` like any
script and stops on Ctrl-C (SIGINT), when Gradio kills its tunnels.
"""

import sys

import gradio as gr

from tests.gradio.app import Probe, build_demo

if __name__ == "__main__":
    build_demo(gr, Probe()).launch(share=True, server_port=int(sys.argv[1]))
