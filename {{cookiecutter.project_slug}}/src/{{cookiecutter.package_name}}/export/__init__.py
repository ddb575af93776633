"""Export a trained model to other runtimes (llama_cpp extra): one GGUF file for llama.cpp and Ollama.

`gguf.py` writes the file, `llama.py` opens it with llama.cpp (serving and evaluation share it).
"""
