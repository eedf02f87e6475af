{#
    Incremental rollups by UTC day. A run recomputes every day touched by events ingested since the
    rollup's watermark (its newest `last_ingested_at`), whatever the day: a late event re-touches
    its own day. Each touched day is replaced whole (nudge_incremental_by_day below).
#}

{% macro nudge_touched_days(events_relation, time_column, watermark_column='last_ingested_at') -%}
    select distinct {{ dbt.cast(time_column, 'date') }}
    from {{ events_relation }}
    where ingested_at > (
        select coalesce(max({{ watermark_column }}), {{ dbt.cast("'1900-01-01'", dbt.type_timestamp()) }})
        from {{ this }}
    )
{%- endmacro %}


{#
    The incremental config of a rollup by day, per engine: DuckDB and Postgres delete the touched
    days and insert them again (`unique_key` the day); Spark overwrites the touched days'
    partitions of a Parquet table (dbt-spark's insert_overwrite, dynamic partition overwrite).
    Either way the model selects the touched days whole.
#}
{% macro nudge_incremental_by_day(day_column) -%}
    {{ return(adapter.dispatch('nudge_incremental_by_day', 'nudge')(day_column)) }}
{%- endmacro %}

{% macro default__nudge_incremental_by_day(day_column) -%}
    {{ return({'incremental_strategy': 'delete+insert', 'unique_key': day_column}) }}
{%- endmacro %}

{% macro spark__nudge_incremental_by_day(day_column) -%}
    {{ return({
        'incremental_strategy': 'insert_overwrite',
        'partition_by': [day_column],
        'file_format': 'parquet',
    }) }}
{%- endmacro %}
