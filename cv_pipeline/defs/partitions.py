"""Landing batches: one dynamic partition per batch folder, added by the landing sensor."""

import dagster as dg

landing_batches = dg.DynamicPartitionsDefinition(name="landing_batches")
