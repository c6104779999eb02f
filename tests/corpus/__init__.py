"""The real-model corpus: ONNX files nobody here wrote (vendors' wheels, exporters' output), compiled and checked
against ONNX Runtime. models.py lists them, test_corpus.py is the test, run.py writes STATUS.md."""
