"""Promotion: which admitted version serves. `promoter` writes the routing policy (automatic
promotion after a pass, promote, weight, abort, rollback, drains of old versions);
`progressive` carries out progressive mode step by step from `analysis`, its pure decisions
(advance, hold, roll back) over the canary's live metrics."""
