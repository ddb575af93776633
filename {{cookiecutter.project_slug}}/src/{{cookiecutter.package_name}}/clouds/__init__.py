"""Deployment: put the served model into a container image and run it in the cloud chosen at bake time.

    DRY_RUN=1 make deploy      # print every command and API call, create nothing
    make deploy                # bundle the champion model, build + push the image, create the endpoint
    make teardown              # delete everything `make deploy` created

Modules: `settings` (deploy variables from the environment / .env, checked before anything is created),
`bundle` (the model folder the image carries), and one module per cloud (aws, gcp, azure or hf_spaces),
whose functions take their API client as a parameter so tests can pass a fake or a moto-backed one.
"""
