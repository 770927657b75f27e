"""Notifications to technicians, managers, sales and customers (issue 14).

    policy    pure rules: routes, quiet hours, one message per incident, folding, backoff,
              channel health, throttling, webhook signatures
    events    events into the outbox, in the transaction that stored what happened
    render    messages from Jinja2 templates (templates/) in Vietnamese or English
    channels  delivery: SMTP e-mail, signed webhooks, apprise (chat services); secrets
    sender    the loop that claims, sends, retries, and queues digests, overdue notices and
              the monthly care reports (PDF attached to e-mails)
"""
