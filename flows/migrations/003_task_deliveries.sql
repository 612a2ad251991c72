-- How many times an activity task was handed to a worker. A delivery that
-- never reported back (the worker died, or its lease ran out) counts as a
-- failed attempt, so an activity that kills its worker cannot loop forever.
ALTER TABLE task_queue ADD COLUMN deliveries integer NOT NULL DEFAULT 0;
