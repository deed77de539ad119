"""The Jinja templates the automations send: notification subjects and bodies, and the
parameters of a resumed run. The server renders them with the flow run (or event) in context."""

from __future__ import annotations

# The job of a flow run: its `job_id` parameter, else its `job:<id>` tag (the flow tags itself once
# the job is known), else nothing. Jinja, rendered by the server with `flow_run` in its context.
_JOB_ID = (
    "{%- set ns = namespace(job_id=flow_run.parameters.get('job_id')) -%}"
    "{%- for tag in flow_run.tags -%}"
    "{%- if not ns.job_id and tag.startswith('job:') -%}{%- set ns.job_id = tag[4:] -%}{%- endif -%}"
    "{%- endfor -%}"
)

RUN_FINISHED_SUBJECT = (
    "Migration {{ flow_run.parameters.source_name }} {{ flow_run.state.name }}: flow run {{ flow_run.name }}"
)
RUN_FINISHED_BODY = (
    _JOB_ID
    + "Flow run {{ flow_run.name }} ({{ flow_run.id }}) of flow migrate ended {{ flow_run.state.name }}.\n"
    "Migration: {{ flow_run.parameters.source_name }}\n"
    "Job: {{ ns.job_id or 'none yet (the run ended before its job started)' }}\n"
    "Resume attempt: {{ flow_run.parameters.get('resume_attempt') or 0 }}\n"
    "{% if flow_run.state.message %}Message: {{ flow_run.state.message }}\n{% endif %}"
    "{% if flow_run|ui_url %}Flow run: {{ flow_run|ui_url }}\n{% endif %}"
)

VALIDATION_FAILED_SUBJECT = (
    "Migration validation failed: job {{ event.resource.id[14:] }}, "
    "{{ event.resource['migration.table'] }} chunk {{ event.resource['migration.chunk'] }}"
)
VALIDATION_FAILED_BODY = (
    "{% if event.payload.check == 'verify' %}The verify flow found the target no longer matches the "
    "source (it changed nothing).\n{% else %}A validation check failed; the chunk was not loaded.\n{% endif %}"
    "Job: {{ event.resource.id[14:] }}\n"
    "Table: {{ event.resource['migration.table'] }}\n"
    "Chunk: {{ event.resource['migration.chunk'] }}\n"
    "Error: {{ event.payload.error }}\n"
    "{% if flow_run %}Flow run: {{ flow_run.name }} ({{ flow_run.id }})"
    "{% if flow_run|ui_url %} {{ flow_run|ui_url }}{% endif %}\n{% endif %}"
)

# All of the crashed run's parameters, with its job and the next attempt number. The whole parameter
# set is one JSON-valued template, so parameters passed to the crashed run (not only the
# deployment's defaults) carry over.
AUTO_RESUME_PARAMETERS = {
    "__prefect_kind": "json",
    "value": {
        "__prefect_kind": "jinja",
        "template": _JOB_ID + "{{ dict(flow_run.parameters, job_id=ns.job_id or none,"
        " resume_attempt=(flow_run.parameters.get('resume_attempt') or 0) + 1) | tojson }}",
    },
}
