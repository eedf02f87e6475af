-- One row per entry of a member into a campaign (the ledger's step-0 rows): its group, what
-- happened to its messages, and whether the campaign's goal was met within the goal's window.
--
-- group: `holdout` for skipped(holdout); `treatment` for the other entries that could have been
-- held out, i.e. that were sendable at evaluation (every state but skipped, plus rows skipped
-- at the claim because the address was suppressed meanwhile). Entries skipped at evaluation for
-- any other reason (stale, no_email, invalid_email, suppressed, cooldown, duplicate_address)
-- were never eligible for the holdout and are in neither group: comparing them would compare
-- different populations.
--
-- The horizon is the campaign's latest evaluation at or before `end` (var nudge_as_of; absent:
-- now): entries after it are left out, conversions after it do not count yet, and an entry is
-- `matured` once entered_at + within_days <= horizon (its goal window has closed).

with

ledger as (

    select * from {{ source('nudge', 'send_ledger') }}

),

horizons as (

    select campaign, max(as_of) as horizon
    from {{ source('nudge', 'evaluations') }}
    where as_of <= {{ nudge_as_of() }}
    group by campaign

),

goals as (

    select * from {{ ref('int_campaign_goals') }}

),

entries as (

    select
        ledger.campaign,
        ledger.entity_id,
        ledger.entry_as_of as entered_at,
        ledger.ledger_key,
        ledger.state,
        ledger.reason,
        ledger.recipient,
        ledger.sent_at,
        case
            when ledger.state = 'skipped' and ledger.reason = 'holdout' then 'holdout'
            when ledger.state <> 'skipped' or ledger.claimed_at is not null then 'treatment'
        end as entry_group,
        coalesce(goals.goal, 'exit') as goal,
        coalesce(goals.within_days, 14) as within_days,
        horizons.horizon

    from ledger
    inner join horizons on horizons.campaign = ledger.campaign
    left join goals on goals.campaign = ledger.campaign
    where ledger.step = 0 and ledger.entry_as_of <= horizons.horizon

),

-- Every message of an entry (its drip steps too) and the delivery events matched to it.
events as (

    select
        ledger.campaign,
        ledger.entity_id,
        ledger.entry_as_of as entered_at,
        max(case when ev.event = 'delivered' then 1 else 0 end) as delivered,
        max(case when ev.event = 'open' then 1 else 0 end) as opened,
        max(case when ev.event = 'click' then 1 else 0 end) as clicked,
        max(case when ev.event in ('bounce', 'dropped') then 1 else 0 end) as bounced,
        max(case when ev.event in ('unsubscribe', 'group_unsubscribe') then 1 else 0 end)
            as unsubscribed

    from {{ source('nudge', 'email_events') }} as ev
    inner join ledger on ledger.ledger_key = ev.nudge_key
    group by 1, 2, 3

),

-- Unsubscribes through a message's own link (`nudge serve`): a suppression from this campaign,
-- first seen after the entry's message went out, by any recipient of it. Each recipient of a
-- company email (every contact in To, the CCs) has a link naming the member, and the sighting
-- keeps that member (entity_id): whoever clicked, the member's entry counts. Sightings stored
-- before the member was kept match the entry's first To address. A member's unsubscribe is
-- credited to one entry: its latest sent at or before the unsubscribe (a re-entry's message
-- holds the newer link).
link_unsubscribe_candidates as (

    select
        entries.ledger_key,
        row_number() over (
            partition by s.email, s.source, s.first_seen_at
            order by entries.sent_at desc, entries.ledger_key
        ) as latest_first

    from entries
    inner join {{ source('nudge', 'suppressions') }} as s
        on s.source = {{ dbt.concat(["'unsubscribe:'", 'entries.campaign']) }}
        and s.first_seen_at >= entries.sent_at
        and (
            s.entity_id = entries.entity_id
            or (s.entity_id is null and s.email = lower(entries.recipient))
        )

),

link_unsubscribes as (

    select distinct ledger_key
    from link_unsubscribe_candidates
    where latest_first = 1

),

-- The default goal: the first evaluation after the entry at which the member was not in the
-- cohort (it left).
exits as (

    select
        entries.ledger_key,
        min(ev.as_of) as converted_at

    from entries
    inner join {{ source('nudge', 'evaluations') }} as ev
        on ev.campaign = entries.campaign
        and ev.as_of > entries.entered_at
        and ev.as_of <= entries.horizon
    left join {{ source('nudge', 'cohort_membership') }} as m
        on m.campaign = ev.campaign and m.as_of = ev.as_of and m.entity_id = entries.entity_id
    where entries.goal = 'exit' and m.entity_id is null
    group by entries.ledger_key

),

-- A goal model: its first conversion after the entry.
goal_hits as (

    select
        entries.ledger_key,
        min(conv.converted_at) as converted_at

    from entries
    inner join {{ ref('int_campaign_goal_conversions') }} as conv
        on conv.campaign = entries.campaign
        and conv.entity_id = entries.entity_id
        and conv.converted_at > entries.entered_at
        and conv.converted_at <= entries.horizon
    where entries.goal <> 'exit'
    group by entries.ledger_key

),

final as (

    select
        entries.campaign,
        entries.entity_id,
        entries.entered_at,
        entries.ledger_key,
        entries.entry_group as {{ adapter.quote('group') }},
        entries.state,
        entries.reason,
        entries.goal,
        entries.within_days,
        coalesce(events.delivered, 0) as delivered,
        coalesce(events.opened, 0) as opened,
        coalesce(events.clicked, 0) as clicked,
        coalesce(events.bounced, 0) as bounced,
        case
            when events.unsubscribed = 1 or link_unsubscribes.ledger_key is not null then 1
            else 0
        end as unsubscribed,
        case
            when coalesce(exits.converted_at, goal_hits.converted_at) is not null
                and coalesce(exits.converted_at, goal_hits.converted_at)
                    <= {{ nudge_add_days('entries.entered_at', 'entries.within_days') }}
            then 1 else 0
        end as converted,
        coalesce(exits.converted_at, goal_hits.converted_at) as converted_at,
        case
            when {{ nudge_add_days('entries.entered_at', 'entries.within_days') }}
                <= entries.horizon
            then 1 else 0
        end as matured,
        entries.horizon

    from entries
    left join events
        on events.campaign = entries.campaign
        and events.entity_id = entries.entity_id
        and events.entered_at = entries.entered_at
    left join link_unsubscribes on link_unsubscribes.ledger_key = entries.ledger_key
    left join exits on exits.ledger_key = entries.ledger_key
    left join goal_hits on goal_hits.ledger_key = entries.ledger_key

)

select * from final
