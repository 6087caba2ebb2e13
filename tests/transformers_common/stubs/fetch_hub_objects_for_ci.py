"""Stub of transformers' utils/fetch_hub_objects_for_ci.py (not in the source release): CI
pre-downloads test media and maps their URLs to local files; here URLs stay URLs, so the few
processor tests that read remote media (chat templates with videos) need the network."""


def url_to_local_path(url, *args, **kwargs):
    return url
