"""Dense retrieval: encoders, the FAISS item index (stage `index`), dialogue queries and stage `retrieve`.

Modules are imported directly (`from reges.retrieval.index import ItemIndex`); this package imports
nothing on its own, so `import reges.retrieval` stays cheap.
"""
