{#
    Campaign goals, read from the campaigns' yml (`config.meta.nudge.campaigns[].goal`) through
    dbt's graph, so the yml stays the one place a goal is declared: analysts running
    `dbt build --select tag:nudge_outcomes` by hand get what Nudge gets, with no var to pass.
    Nudge validates the same keys when it loads the campaigns (email_jobs/campaigns.py).

    The graph exists only at execution; at parse time these return one well-typed empty row set.
    Goal models are read by their relation name (a `ref()` found only at execution is refused by
    dbt), so the outcome models are built after the goal models: their own invocation after the
    sends (the pipeline, `nudge report`), and `-- depends_on` orders the shipped goals in a
    hand-run `dbt build`.
#}

{% macro nudge_campaign_goals() -%}
    {#- [{campaign, model (none: exit), relation, within_days}] for every campaign in the graph. -#}
    {%- set goals = [] -%}
    {%- if execute -%}
        {%- set relations = {} -%}
        {%- for node in graph.nodes.values() if node.resource_type == 'model' -%}
            {%- do relations.update({node.name: node.relation_name}) -%}
        {%- endfor -%}
        {%- for node in graph.nodes.values() if node.resource_type == 'model' -%}
            {%- set nudge = (node.config.get('meta') or {}).get('nudge') or (node.get('meta') or {}).get('nudge') -%}
            {%- if nudge is mapping and nudge.get('campaigns') is iterable -%}
                {%- for c in nudge.get('campaigns') if c is mapping and c.get('name') -%}
                    {%- set goal = c.get('goal') or {} -%}
                    {%- set model = goal.get('model') if goal is mapping else none -%}
                    {%- set days = goal.get('within_days', 14) if goal is mapping else 14 -%}
                    {%- if days is not number or days is boolean or days <= 0 -%}
                        {{ exceptions.raise_compiler_error(
                            "campaign " ~ c.name ~ ": goal.within_days must be a number above 0") }}
                    {%- endif -%}
                    {%- if model and model not in relations -%}
                        {{ exceptions.raise_compiler_error(
                            "campaign " ~ c.name ~ ": goal.model " ~ model ~ " is not a model of the project") }}
                    {%- endif -%}
                    {%- do goals.append({
                        'campaign': c.name, 'model': model,
                        'relation': relations[model] if model else none, 'within_days': days}) -%}
                {%- endfor -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(goals) }}
{%- endmacro %}


{% macro nudge_sql_string(value) -%}
    {#- `value` as a SQL string literal. -#}
    {{ return(adapter.dispatch('nudge_sql_string', 'nudge')(value)) }}
{%- endmacro %}

{% macro default__nudge_sql_string(value) -%}
    '{{ value | string | replace("'", "''") }}'
{%- endmacro %}

{% macro spark__nudge_sql_string(value) -%}
    {#- Spark reads backslash escapes in literals, and '' as two adjacent literals. -#}
    '{{ value | string | replace("\\", "\\\\") | replace("'", "\\'") }}'
{%- endmacro %}


{% macro nudge_type_double() -%}
    {{ return(adapter.dispatch('nudge_type_double', 'nudge')()) }}
{%- endmacro %}

{% macro default__nudge_type_double() -%}double precision{%- endmacro %}

{% macro spark__nudge_type_double() -%}double{%- endmacro %}


{% macro nudge_goal_settings() -%}
    {#- One row per campaign: campaign, goal ('exit' or the model), within_days. -#}
    {%- set goals = nudge_campaign_goals() -%}
    {%- for g in goals %}
    select
        cast({{ nudge_sql_string(g.campaign) }} as {{ dbt.type_string() }}) as campaign,
        cast({{ nudge_sql_string(g.model or 'exit') }} as {{ dbt.type_string() }}) as goal,
        cast({{ g.within_days }} as {{ nudge_type_double() }}) as within_days
    {{ 'union all' if not loop.last }}
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as campaign,
        cast(null as {{ dbt.type_string() }}) as goal,
        cast(null as {{ nudge_type_double() }}) as within_days
    where 1 = 0
    {%- endfor %}
{%- endmacro %}


{% macro nudge_goal_conversions() -%}
    {#- Every conversion instant of every campaign with a goal model: campaign, entity_id,
        converted_at. (The default goal, leaving the cohort, comes from nudge.cohort_membership.) -#}
    {%- set goals = nudge_campaign_goals() | selectattr('model') | list -%}
    {%- for g in goals %}
    select
        cast({{ nudge_sql_string(g.campaign) }} as {{ dbt.type_string() }}) as campaign,
        cast(entity_id as {{ dbt.type_string() }}) as entity_id,
        cast(converted_at as {{ dbt.type_timestamp() }}) as converted_at
    from {{ g.relation }}
    where converted_at is not null
    {{ 'union all' if not loop.last }}
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as campaign,
        cast(null as {{ dbt.type_string() }}) as entity_id,
        cast(null as {{ dbt.type_timestamp() }}) as converted_at
    where 1 = 0
    {%- endfor %}
{%- endmacro %}


{% macro nudge_add_days(timestamp_expr, days_expr) -%}
    {{ return(adapter.dispatch('nudge_add_days')(timestamp_expr, days_expr)) }}
{%- endmacro %}

{#- A timestamp plus a (possibly fractional) number of days, to the second. -#}
{% macro default__nudge_add_days(timestamp_expr, days_expr) -%}
    ({{ timestamp_expr }} + ({{ days_expr }}) * interval '1 day')
{%- endmacro %}

{% macro duckdb__nudge_add_days(timestamp_expr, days_expr) -%}
    ({{ timestamp_expr }} + to_microseconds(cast(round(cast({{ days_expr }} as double) * 86400000000) as bigint)))
{%- endmacro %}

{% macro spark__nudge_add_days(timestamp_expr, days_expr) -%}
    timestamp_micros(unix_micros({{ timestamp_expr }}) + cast(round(cast({{ days_expr }} as double) * 86400000000) as bigint))
{%- endmacro %}
