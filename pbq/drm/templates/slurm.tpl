#!/bin/sh
# Slurm job script written by pbq (resources are passed as sbatch options).
${directives}
${body}
