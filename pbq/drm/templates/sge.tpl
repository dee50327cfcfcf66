#!/bin/sh
# Grid Engine job script written by pbq (resources are passed as qsub options).
${directives}
${body}
