#!/bin/bash
# The example job: a tiny "analysis" that writes its result to output.txt.
trap 'echo $? > .orchestrator.exit' EXIT
echo "job started on $(hostname) at $(date -u +%FT%TZ)" > output.txt
sleep 2
echo "sum of 1..100 = $(seq 100 | paste -sd+ | bc 2>/dev/null || echo 5050)" >> output.txt
