"""Set-up for a Prefect server: block types and (later) automations. Deployments are in prefect.yaml."""
